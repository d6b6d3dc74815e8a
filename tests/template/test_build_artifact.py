"""What `sam build` makes of this repository (.aws-sam/build, built by `make build`), checked as
Lambda would receive it: python3.13 on arm64, each function's folder at /var/task, the layer's
content at /opt (read-only), the runtime's own AWS SDK, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.local.aws_stack import load_template
from tests.local.bench import lambda_like_environment, template_environment

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".aws-sam" / "build"
LAYER_SOURCE = REPO / "layers" / "cancellation"
# What Lambda's python3.13 runtime has: Python 3.13 and the AWS SDK (`make build` creates it).
RUNTIME_PYTHON = REPO / ".venv" / "lambda-runtime" / "bin" / "python"
FUNCTIONS = {
    "CancelFunction": REPO / "functions" / "cancel",
    "PollFunction": REPO / "functions" / "poll",
    "ReconcileFunction": REPO / "functions" / "reconcile",
    "DeadLetterFunction": REPO / "functions" / "deadletter",
}
LAMBDA_SIZE_LIMIT = 250 * 2**20  # unzipped: the function's code and all its layers
ELF_MACHINE_AARCH64 = 0xB7
PYC_UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file's ``name==version`` lines (hash lines skipped)."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not text or text.startswith("-"):
            continue
        requirement = Requirement(text)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {text} is not pinned"
        found[canonicalize_name(requirement.name)] = specifier.version
    return found


LAYER_PINS = pins(LAYER_SOURCE / "requirements.txt")
RUNTIME_PINS = pins(LAYER_SOURCE / "lambda-runtime.txt")


@pytest.fixture(scope="module")
def built() -> Path:
    if not (BUILD / "template.yaml").is_file() or not RUNTIME_PYTHON.is_file():
        pytest.fail("no build to check: run `make build` (`make test` does) first")
    return BUILD


@pytest.fixture(scope="module")
def layer(built: Path) -> Path:
    template = load_template(built / "template.yaml")
    return built / str(template["Resources"]["CancellationLayer"]["Properties"]["ContentUri"]) / "python"


def function_dir(built: Path, logical_id: str) -> Path:
    template = load_template(built / "template.yaml")
    return built / str(template["Resources"][logical_id]["Properties"]["CodeUri"])


def files_under(root: Path) -> Iterator[Path]:
    return (path for path in sorted(root.rglob("*")) if path.is_file())


@cache
def runtime_facts() -> dict[str, str]:
    """The runtime interpreter's bytecode magic number and extension-module suffix."""
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [
            str(RUNTIME_PYTHON),
            "-c",
            "import importlib.util, json, sysconfig;"
            "print(json.dumps({'magic': importlib.util.MAGIC_NUMBER.hex(),"
            " 'version': sysconfig.get_python_version()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    facts: dict[str, str] = json.loads(done.stdout)
    return facts


# ------------------------------------------------------------------ the functions


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_each_function_holds_only_its_entry_point(built: Path, logical_id: str) -> None:
    code = function_dir(built, logical_id)
    assert [path.relative_to(code).as_posix() for path in files_under(code)] == ["app.py"]
    assert (code / "app.py").read_bytes() == (FUNCTIONS[logical_id] / "app.py").read_bytes(), (
        "the build is older than the source: run `make build`"
    )


# ------------------------------------------------------------------ the layer


def test_the_layer_holds_the_package_as_in_the_source(layer: Path) -> None:
    source = LAYER_SOURCE / "python" / "cancellation"
    shipped = layer / "cancellation"
    assert sorted(p.name for p in shipped.glob("*.py")) == sorted(p.name for p in source.glob("*.py"))
    stale = [p.name for p in source.glob("*.py") if (shipped / p.name).read_bytes() != p.read_bytes()]
    assert stale == [], "the build is older than the source: run `make build`"


def installed_distributions(layer: Path) -> dict[str, metadata.PathDistribution]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist
        for dist in (metadata.PathDistribution(path) for path in layer.glob("*.dist-info"))
    }


def test_the_layer_ships_exactly_the_pinned_runtime_dependencies(layer: Path) -> None:
    distributions = installed_distributions(layer)
    assert {name: dist.version for name, dist in distributions.items()} == LAYER_PINS
    # The runtime's precompiled SDK must not be shadowed by a copy in the layer.
    assert not {"boto3", "botocore", "s3transfer"} & set(distributions)
    assert not (layer / "boto3").exists()
    assert not (layer / "botocore").exists()


def test_every_file_of_the_layer_belongs_to_the_package_or_a_pinned_wheel(layer: Path) -> None:
    """Nothing else rides along: no dev tool, no stray copy of the source tree, no scripts."""
    recorded = set()
    for dist in installed_distributions(layer).values():
        for entry in dist.files or ():
            recorded.add((layer / entry).resolve())
    unexplained = []
    for path in files_under(layer):
        relative = path.relative_to(layer)
        if relative.parts[0] == "cancellation" or path.suffix == ".pyc":
            continue
        if path.resolve() not in recorded:
            unexplained.append(relative.as_posix())
    assert unexplained == []
    dev_only = {
        canonicalize_name(name)
        for name in (metadata.distribution(d).metadata["Name"] for d in ("pytest", "moto", "mypy", "ruff"))
    }
    assert not dev_only & set(installed_distributions(layer))


def test_the_dependencies_the_tests_run_with_are_the_ones_the_layer_ships() -> None:
    """The development environment has the same versions as the layer and the runtime, so what the
    tests exercise is what deploys."""
    for name, version in {**LAYER_PINS, **RUNTIME_PINS}.items():
        assert metadata.version(name) == version, name
    shared = set(LAYER_PINS) & set(RUNTIME_PINS)
    assert {name: LAYER_PINS[name] for name in shared} == {name: RUNTIME_PINS[name] for name in shared}


def test_every_pin_of_the_layer_has_a_hash() -> None:
    text = (LAYER_SOURCE / "requirements.txt").read_text(encoding="utf-8")
    requirements = re.findall(
        r"^([A-Za-z0-9_.-]+)==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}$", text, re.MULTILINE
    )
    assert {canonicalize_name(name) for name in requirements} == set(LAYER_PINS)


def lambda_tags() -> set[tags.Tag]:
    """The wheel tags pip would accept on Lambda's python3.13, arm64 (Amazon Linux 2023, glibc 2.34)."""
    platforms = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 35))]
    return {
        *tags.cpython_tags(python_version=(3, 13), abis=["cp313", "abi3", "none"], platforms=platforms),
        *tags.compatible_tags(python_version=(3, 13), interpreter="cp313", platforms=platforms),
    }


def test_every_wheel_is_for_cpython_313_on_arm64(layer: Path) -> None:
    accepted = lambda_tags()
    for name, dist in installed_distributions(layer).items():
        wheel = dist.read_text("WHEEL") or ""
        wheel_tags = {
            tag for line in re.findall(r"^Tag: (\S+)$", wheel, re.MULTILINE) for tag in tags.parse_tag(line)
        }
        assert wheel_tags, f"{name}: no wheel tags recorded"
        assert wheel_tags & accepted, (
            f"{name}: {sorted(map(str, wheel_tags))} do not run on Lambda arm64 3.13"
        )


def test_every_native_module_is_an_arm64_build_for_313(layer: Path) -> None:
    native = [path for path in files_under(layer) if ".so" in path.suffixes]
    assert native, "wrapt ships a native module: none found"
    for path in native:
        header = path.read_bytes()[:20]
        assert header[:4] == b"\x7fELF", path.name
        machine = int.from_bytes(header[18:20], "little")
        assert machine == ELF_MACHINE_AARCH64, f"{path.name}: ELF machine {machine:#x}, not AArch64"
        assert re.search(r"\.(cpython-313-aarch64-linux-gnu|abi3)\.so$", path.name), path.name


def test_every_module_is_precompiled_by_the_runtimes_python(layer: Path) -> None:
    """Lambda cannot write .pyc under /opt: a module shipped without one is compiled at every cold
    start. unchecked-hash: the .pyc is trusted as it is (zip and upload do not keep timestamps)."""
    facts = runtime_facts()
    assert facts["version"] == "3.13"
    magic = bytes.fromhex(facts["magic"])
    missing, wrong = [], []
    for source in files_under(layer):
        if source.suffix != ".py":
            continue
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"
        if not compiled.is_file():
            missing.append(source.relative_to(layer).as_posix())
            continue
        header = compiled.read_bytes()[:16]
        flags = int.from_bytes(header[4:8], "little")
        if header[:4] != magic or flags != PYC_UNCHECKED_HASH:
            wrong.append(source.relative_to(layer).as_posix())
    assert missing == []
    assert wrong == []


def test_the_artifact_is_far_below_lambdas_size_limit(built: Path, layer: Path) -> None:
    layer_bytes = sum(path.stat().st_size for path in files_under(layer))
    for logical_id in FUNCTIONS:
        total = layer_bytes + sum(p.stat().st_size for p in files_under(function_dir(built, logical_id)))
        assert total < LAMBDA_SIZE_LIMIT / 10, f"{logical_id}: {total / 2**20:.1f} MB unzipped"


def test_the_built_layer_is_reproducible(layer: Path) -> None:
    """Each installed file matches the hash its wheel recorded: the pinned wheels, unmodified."""
    for name, dist in installed_distributions(layer).items():
        for entry in dist.files or ():
            if entry.hash is None or ".." in entry.parts:  # RECORD itself; scripts, not shipped
                continue
            digest = hashlib.new(entry.hash.mode, (layer / entry).read_bytes()).digest()
            assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == entry.hash.value, (
                f"{name}: {entry}"
            )


# ------------------------------------------------------------------ importing as Lambda does

# Lambda's sys.path for python3.13: the function's folder, then the layer's python/, then the
# runtime's own packages. -I: nothing from this machine's environment or user site; -B: /var/task
# and /opt are read-only, so no .pyc is written.
IMPORT_AS_LAMBDA = """
import json, os, sys
code, layer = os.environ["BENCH_CODE_DIR"], os.environ["BENCH_LAYER_DIR"]
sys.path[:0] = [code, layer]
import app
assert callable(app.lambda_handler)
origins = {}
for name, module in sorted(sys.modules.items()):
    where = getattr(module, "__file__", None)
    if where:
        origins[name.split(".")[0]] = os.path.realpath(where)
print(json.dumps({"origins": origins, "prefix": os.path.realpath(sys.prefix),
                  "base": os.path.realpath(sys.base_prefix)}))
"""


@pytest.mark.parametrize("tracing", ["off", "on"])
@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_each_function_imports_from_the_artifact_alone(
    built: Path, layer: Path, logical_id: str, tracing: str
) -> None:
    code = function_dir(built, logical_id)
    env = lambda_like_environment(code, layer)
    env.update(template_environment(load_template(built / "template.yaml"), logical_id))
    if tracing == "on":
        env["POWERTOOLS_TRACE_DISABLED"] = "false"
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [str(RUNTIME_PYTHON), "-I", "-B", "-c", IMPORT_AS_LAMBDA],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    origins: dict[str, str] = found["origins"]
    layer_dir, code_dir = str(layer.resolve()), str(code.resolve())
    assert origins["app"] == str((code / "app.py").resolve())
    # Powertools only for call tracing (its Tracer): our own logs, metrics and secret cache otherwise.
    from_layer = ("cancellation", "urllib3", *(("aws_lambda_powertools",) if tracing == "on" else ()))
    for package in from_layer:
        assert origins[package].startswith(layer_dir + "/"), package
    assert ("aws_lambda_powertools" in origins) == (tracing == "on")
    for package in ("boto3", "botocore"):
        assert origins[package].startswith(found["prefix"] + "/"), f"{package} is not the runtime's"
    allowed = (layer_dir + "/", code_dir + "/", found["prefix"] + "/", found["base"] + "/")
    assert sorted(name for name, where in origins.items() if not where.startswith(allowed)) == []
    assert ("aws_xray_sdk" in origins) == (tracing == "on")
    if tracing == "on":
        assert origins["aws_xray_sdk"].startswith(layer_dir + "/")
