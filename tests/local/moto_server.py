"""moto in server mode, in this process, with our handlers as the Lambda functions.

``LocalAws`` starts ``moto.server.ThreadedMotoServer`` on a free loopback port and points
every boto3 client of this process at it through the standard ``AWS_ENDPOINT_URL``. It
switches on moto's Step Functions interpreter (real ASL executions) and its Docker-free
Lambda, and installs :mod:`tests.local.lambda_runtime` so that invoking a registered
function runs our real handler in-process (and :mod:`tests.local.moto_fixes`, so that task
tokens are answered as AWS does). The server runs in this process, so the patch
applies to requests from any client, including the one the ASL interpreter makes itself
(which goes to ``http://localhost:$MOTO_PORT``).

Usage::

    with LocalAws() as aws:
        sqs = boto3.client("sqs")          # already talks to moto
        ...
        aws.reset()                          # empty moto between tests

moto's state lives in module-level backends, so two ``LocalAws`` in one process share it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any

from moto.core.config import default_user_config
from moto.server import ThreadedMotoServer

from tests.local import lambda_runtime, moto_fixes

__all__ = ["ACCOUNT_ID", "DEFAULT_REGION", "MOTO_CONFIG", "LocalAws"]

#: QFPay's Hong Kong region; moto has every service we use there (sqs, lambda,
#: stepfunctions, events, secretsmanager, dynamodb, logs; iam is global).
DEFAULT_REGION = "ap-east-1"
#: moto's default account (the account of the fake credentials below).
ACCOUNT_ID = "123456789012"
#: What ``/moto-api/config`` receives: run ASL for real, and Lambda without Docker.
_LAMBDA_ROLE = "local-lambda-execution"
_LAMBDA_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}

# Variables that would send boto3 somewhere else or make it look for real credentials.
_CLEARED_PREFIXES = ("AWS_ENDPOINT_URL_",)
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


class LocalAws:
    """A context manager running moto on ``127.0.0.1:<free port>`` for this process."""

    def __init__(self, region: str = DEFAULT_REGION, *, port: int = 0, quiet: bool = True) -> None:
        """``port=0`` picks a free port; ``quiet`` hides the server's per-request log lines."""
        self.region = region
        self._quiet = quiet
        self._saved_log_level: int | None = None
        self.account_id = ACCOUNT_ID
        self._requested_port = port
        self._server: ThreadedMotoServer | None = None
        self._port: int | None = None
        self._saved_environ: dict[str, str] | None = None
        self._saved_config: dict[str, Any] | None = None
        self._installed_hook = False

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalAws:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("LocalAws is already running")
        self._saved_environ = dict(os.environ)
        self._saved_config = {k: copy.deepcopy(default_user_config.get(k)) for k in MOTO_CONFIG}
        if self._quiet:
            werkzeug_log = logging.getLogger("werkzeug")
            self._saved_log_level = werkzeug_log.level
            werkzeug_log.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._requested_port, verbose=False)
        server.start()
        self._server = server
        self._port = int(server.get_host_and_port()[1])
        try:
            self._set_environment()
            self._post("/moto-api/config", MOTO_CONFIG)
            if not lambda_runtime.is_installed():
                lambda_runtime.install()
                moto_fixes.install()
                self._installed_hook = True
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            self._stop_executions()
            if self._saved_config is not None:
                restore = {k: v for k, v in self._saved_config.items() if v is not None}
                self._post("/moto-api/config", restore)
        finally:
            server.stop()
            if self._installed_hook:
                lambda_runtime.uninstall()
                moto_fixes.uninstall()
                self._installed_hook = False
            lambda_runtime.unregister_all()
            lambda_runtime.clear_invocations()
            if self._saved_environ is not None:
                os.environ.clear()
                os.environ.update(self._saved_environ)
                self._saved_environ = None
            self._port = None
            if self._saved_log_level is not None:
                logging.getLogger("werkzeug").setLevel(self._saved_log_level)
                self._saved_log_level = None

    def reset(self) -> None:
        """Empty moto, forget registered functions and recorded invocations.

        Running Step Functions executions are stopped first, so their background threads
        do not call into the next test. The config is applied again afterwards.
        """
        self._stop_executions()
        self._post("/moto-api/reset", None)
        self._post("/moto-api/config", MOTO_CONFIG)
        lambda_runtime.unregister_all()
        lambda_runtime.clear_invocations()

    # -- facts -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalAws is not running")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service_name: str) -> Any:
        """A boto3 client for ``service_name`` pointed at this moto."""
        import boto3  # noqa: PLC0415 - keeps importing this module cheap

        return boto3.client(
            service_name,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_function(
        self,
        function_name: str,
        code_dir: Path,
        handler: str = "app.lambda_handler",
        environment: dict[str, str] | None = None,
        *,
        timeout: int = 30,
        memory_size: int = 256,
        runtime: str = "python3.12",
    ) -> str:
        """Create the function in moto and register its code to run in-process.

        The zip uploaded to moto is a placeholder; the code that runs is ``code_dir``'s.
        Returns the function ARN.
        """
        iam = self.client("iam")
        try:
            role_arn = iam.get_role(RoleName=_LAMBDA_ROLE)["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            role_arn = iam.create_role(RoleName=_LAMBDA_ROLE, AssumeRolePolicyDocument=_LAMBDA_TRUST_POLICY)[
                "Role"
            ]["Arn"]
        package = io.BytesIO()
        with zipfile.ZipFile(package, "w") as archive:
            archive.writestr("README.txt", "runs in-process from tests.local.lambda_runtime\n")
        env = dict(environment or {})
        arn: str = self.client("lambda").create_function(
            FunctionName=function_name,
            Runtime=runtime,
            Role=role_arn,
            Handler=handler,
            Code={"ZipFile": package.getvalue()},
            Timeout=timeout,
            MemorySize=memory_size,
            Environment={"Variables": env},
        )["FunctionArn"]
        lambda_runtime.register_function(function_name, Path(code_dir), handler, env)
        return arn

    # -- internals -------------------------------------------------------------------
    def _set_environment(self) -> None:
        for name in list(os.environ):
            if name in _CLEARED or name.startswith(_CLEARED_PREFIXES):
                del os.environ[name]
        os.environ.update(
            {
                # moto's ASL interpreter builds its own clients for http://localhost:$MOTO_PORT
                "MOTO_PORT": str(self.port),
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_SECURITY_TOKEN": "testing",
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )

    def _post(self, path: str, payload: Any) -> Any:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{self.endpoint_url}{path}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body = response.read()
        return json.loads(body) if body else None

    def _stop_executions(self) -> None:
        """Stop every running Step Functions execution in our region (best effort)."""
        if default_user_config.get("stepfunctions", {}).get("execute_state_machine") is not True:
            return
        sfn = self.client("stepfunctions")
        for page in sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                executions = sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine["stateMachineArn"], statusFilter="RUNNING"
                )
                for execution_page in executions:
                    for execution in execution_page["executions"]:
                        # ClientError: it finished meanwhile
                        with contextlib.suppress(sfn.exceptions.ClientError):
                            sfn.stop_execution(executionArn=execution["executionArn"])
