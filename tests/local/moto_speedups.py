"""Speed-ups for moto 5.2.5's in-process emulation: repeated pure work done once, same answers.

In local runs moto emulates AWS in this process, so its CPU competes with our handler for the GIL
(the batch benchmark spends most of a warm batch's moto time on work real AWS does not do). Each
patch below caches the result of work that depends only on its inputs and that moto used to redo
on every request; what moto answers and stores is unchanged:

- ``EventTemplateParser.parse`` (EventBridge, every target of every matching event, with or
  without an InputTransformer) parsed the ~9 JSONPath expressions of its input paths map with
  ``jsonpath_ng.ext.parse`` (a ply parser, ~0.7 ms each) on every call. The patched copy of the
  function is moto's line for line, except that each path string is parsed once: a parsed
  expression is an immutable description of a path, ``find`` does not change it, so the matches
  (and so the delivered event) are the same. An invalid path raises as before (not cached).
- ``method_names_from_class`` (every request: ``BaseResponse.call_action`` asks it whether the
  action is a method of the response class) ran ``inspect.getmembers`` over ~250 attributes. It
  is now computed once per response class; the cached names are dropped if a class in its MRO
  gains or loses an attribute. Replacing a method by another function of the same name (as
  :mod:`tests.local.moto_fixes` does) leaves the answer unchanged.
- ``ConditionExpressionParser.parse`` (DynamoDB, each ConditionExpression, twice per request)
  lexed the expression (six regular expressions per token) and ran its grammar over the tokens.
  Everything up to the last step depends only on the expression, the attribute names and which
  attribute values exist: the values themselves are only looked up and stored in the tree's
  ``:value`` leaves, which no step before ``_make_op_condition`` reads. So the tree is built once
  per (expression, names, value keys); each later call gets a copy of it with its own values
  put in those leaves, looked up as moto's parser looks them up, then moto's own
  ``_make_op_condition`` builds the condition from it, and the names and values it reports as
  used are the same. An expression that does not parse raises as before (not cached); other
  parser classes, a missing expression and non-string names or value keys go to moto's parser.
- ``UpdateExpressionParser.make`` (DynamoDB, each UpdateExpression, twice per UpdateItem)
  tokenised and parsed the expression. The tree depends on the string only, and every consumer in
  moto 5.2.5 only reads it (``find_clauses``) or deep-copies it before changing anything (the
  validators of ``UpdateExpressionValidator``), so one tree per string is shared. An expression
  that does not parse raises as before (not cached).
- ``Validator.__init__`` / ``Validator.validate`` (DynamoDB, each UpdateItem): the first three
  steps of ``UpdateExpressionValidator`` (``ActionCountValidator``, ``OverlappingPathsValidator``,
  ``UpdateHashRangeKeyValidator``; about half of the validation, the first quadratic in the size
  of the expression) only check the untouched copy of the expression's tree: each returns every
  node it is given unchanged or raises. Whether they pass depends only on the expression, the
  attribute names and the table's key attributes. Once they have passed for those, later
  validations of a tree from the cache above skip them and run the remaining steps, which
  then get the same tree they always got. A check that fails is never recorded: it runs (and
  raises) every time. Other validators, and trees that did not come from the cache, run as before.
- ``SQSBackend.send_message`` (every message, from SendMessage or an EventBridge rule) built the
  whole ``Queue.attributes`` dict, counting the queue's visible, delayed and in-flight messages
  (three passes over all of them, each message reading the clock twice), to read only
  ``ContentBasedDeduplication``, an attribute only FIFO queues have. The patched copy is moto's
  line for line, except that for a standard queue it knows that answer without the dict; FIFO
  queues still read it from ``Queue.attributes``. Building that dict only reads the queue.

Together they take moto's CPU for a warm batch of 10 orders in the batch benchmark from about
200 ms to about 80 ms (the JSONPath cache is the largest share, then the SQS, DynamoDB and
dispatch ones). What remains is moto's per-request plumbing (building a request, parsing and
serialising bodies, random request ids), deep copies of items and trees, and the validation
steps that depend on the item and the values: none of it is repeated pure work.

:func:`tests.local.aws_stack.create_stack` installs them (idempotent), which covers the moto of
the batch benchmark (``mock_aws``) and of :class:`tests.local.moto_server.LocalAws`. They patch
private moto functions: moto is pinned, ``tests/local/tests/test_lambda_runtime_canary.py`` fails if a target
moves, and ``tests/local/tests/test_moto_speedups.py`` compares answers with and without them (and fails on
another moto version than the one the copies follow).
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from typing import Any

import jsonpath_ng.ext
import moto.core.responses
import moto.sqs.models
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.parsing.validators import (
    ActionCountValidator,
    OverlappingPathsValidator,
    UpdateExpressionValidator,
    UpdateHashRangeKeyValidator,
    Validator,
)
from moto.events.utils import EventTemplateParser
from moto.sqs.models import SQSBackend

__all__ = ["PATCH_TARGETS", "WRITTEN_FOR_MOTO", "install", "is_installed", "uninstall"]

#: The moto whose functions the copies below follow (tests/local/tests/test_moto_speedups.py checks it).
WRITTEN_FOR_MOTO = "5.2.5"

PATCH_TARGETS: tuple[tuple[Any, str], ...] = (
    (EventTemplateParser, "parse"),
    (moto.core.responses, "method_names_from_class"),
    (ConditionExpressionParser, "parse"),
    (UpdateExpressionParser, "make"),
    (Validator, "__init__"),
    (Validator, "validate"),
    (SQSBackend, "send_message"),
)
_originals: dict[tuple[Any, str], Any] = {}
_lock = threading.Lock()
_CACHE_SIZE = 512

# moto's own functions, which the replacements call for the work they cache.
_jsonpath_ext: Any = jsonpath_ng.ext  # moto imports its parse from here at every call
_sqs: Any = moto.sqs.models
_moto_parse_event_template = vars(EventTemplateParser)["parse"].__func__
_moto_method_names_from_class = vars(moto.core.responses)["method_names_from_class"]
_moto_parse_condition = ConditionExpressionParser.parse
_moto_make_update_expression = vars(UpdateExpressionParser)["make"].__func__
_moto_validator_init = Validator.__init__
_moto_validate = Validator.validate


# -- EventBridge: input paths parsed once -------------------------------------------------------
@functools.lru_cache(maxsize=_CACHE_SIZE)
def _jsonpath(path: str) -> Any:
    return _jsonpath_ext.parse(path)


def _parsed_path(path: Any) -> Any:
    return _jsonpath(path) if isinstance(path, str) else _jsonpath_ext.parse(path)


def _parse_event_template(input_template: str, input_paths_map: dict[str, Any], event: Any) -> dict[str, Any]:
    """moto 5.2.5's ``EventTemplateParser.parse``, with each input path parsed once."""
    template_to_use = input_template or EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE
    input_paths_map = input_paths_map or EventTemplateParser.DEFAULT_EVENT_INPUT_PATHS_MAP
    for input_path in input_paths_map:
        input_expr = _parsed_path(input_paths_map[input_path])
        matches = input_expr.find(event)
        result = EventTemplateParser._stringify(matches[0].value) if matches else None
        if result:
            template_to_use = template_to_use.replace(f"<{input_path}>", result)

    default_inputs_map = {
        "aws.events.event.json": event,
        "aws.events.event.ingestion-time": event["ingestion-time"],
    }
    for input_path in default_inputs_map:  # noqa: PLC0206 - moto's loop, as written
        result = EventTemplateParser._stringify(default_inputs_map[input_path])
        template_to_use = template_to_use.replace(f"<{input_path}>", result)

    answer: dict[str, Any] = json.loads(template_to_use)
    return answer


# -- Every request: a response class's method names computed once -------------------------------
_method_names: dict[type[Any], tuple[tuple[int, ...], list[str]]] = {}


def _class_shape(clazz: type[Any]) -> tuple[int, ...]:
    return tuple(len(vars(klass)) for klass in clazz.__mro__)


def _method_names_from_class(clazz: Any) -> list[str]:
    """``moto.core.utils.method_names_from_class``, computed once per class (and shape)."""
    if not isinstance(clazz, type):
        return list(_moto_method_names_from_class(clazz))
    shape = _class_shape(clazz)
    cached = _method_names.get(clazz)
    if cached is None or cached[0] != shape:
        cached = (shape, list(_moto_method_names_from_class(clazz)))
        _method_names[clazz] = cached
    return list(cached[1])


# -- DynamoDB: condition expressions parsed once (per names and value keys) -----------------------
_conditions: dict[tuple[Any, ...], tuple[Any, tuple[str, ...], tuple[str, ...]]] = {}


def _strings(mapping: Any, *, keys_only: bool) -> Any:
    """A hashable, exact key for names (all items) or values (keys only); None if not plain str."""
    if mapping is None:
        return ()
    if type(mapping) is not dict or not all(type(key) is str for key in mapping):
        return None
    if keys_only:
        return frozenset(mapping)
    if not all(type(value) is str for value in mapping.values()):
        return None
    return frozenset(mapping.items())


def _condition_key(parser: ConditionExpressionParser) -> tuple[Any, ...] | None:
    expression = parser.condition_expression
    if type(parser) is not ConditionExpressionParser or type(expression) is not str or not expression:
        return None
    names = _strings(parser.expression_attribute_names, keys_only=False)
    values = _strings(parser.expression_attribute_values, keys_only=True)
    if names is None or values is None:
        return None
    # None and {} answer the same lookups differently (TypeError, KeyError): keep them apart.
    return (
        expression,
        parser.expression_attribute_names is None,
        names,
        parser.expression_attribute_values is None,
        values,
    )


def _condition_tree(self: ConditionExpressionParser) -> Any:
    """The steps of moto 5.2.5's ``ConditionExpressionParser.parse`` before the names and values
    used are recorded and the condition is built: its syntax tree."""
    nodes = self._lex_condition_expression()
    nodes = self._parse_paths(nodes)
    # NOTE: The docs say that functions should be parsed after
    # IN, BETWEEN, and comparisons like <=.
    # However, these expressions are invalid as function arguments,
    # so it is okay to parse functions first. This needs to be done
    # to interpret size() correctly as an operand.
    nodes = self._apply_functions(nodes)
    nodes = self._apply_comparator(nodes)
    nodes = self._apply_in(nodes)
    nodes = self._apply_between(nodes)
    nodes = self._apply_parens_and_booleans(nodes)
    node = nodes[0]
    self._assert_no_redundant_parentheses(node)
    return node


def _with_values(self: ConditionExpressionParser, node: Any) -> Any:
    """A copy of a cached tree whose ``:value`` leaves hold this parser's values."""
    if node.kind == ConditionExpressionParser.Kind.EXPRESSION_ATTRIBUTE_VALUE:
        # As moto's _parse_path_element fills the leaf: its text is the value's name.
        return node._replace(value=self._lookup_expression_attribute_value(node.text))
    if not node.children:
        return node._replace(children=list(node.children))
    return node._replace(children=[_with_values(self, child) for child in node.children])


def _parse_condition(self: ConditionExpressionParser) -> Any:
    """``ConditionExpressionParser.parse``, the syntax tree of an expression built once."""
    key = _condition_key(self)
    if key is None:
        return _moto_parse_condition(self)
    cached = _conditions.get(key)
    if cached is None:
        node = _condition_tree(self)
        names_found = tuple(self._find_literals(node))
        values_found = tuple(self._find_expr_attr_values(node))
        if len(_conditions) >= _CACHE_SIZE:
            _conditions.clear()
        _conditions[key] = (node, names_found, values_found)
    else:
        template, names_found, values_found = cached
        node = _with_values(self, template)

    self.expr_attr_names_found.extend(names_found)
    self.expr_attr_values_found.extend(values_found)

    op = self._make_op_condition(node)
    return op


# -- DynamoDB: update expressions parsed once, their pure checks passed once ---------------------
_update_trees: dict[str, Any] = {}  # expression -> its tree
_tree_expressions: dict[int, tuple[Any, str]] = {}  # id(tree) -> (tree, expression): trees kept alive
_passed_checks: set[tuple[Any, ...]] = set()  # (expression, names, key attributes) that passed
_validator_checks: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_CHECKS = (ActionCountValidator, OverlappingPathsValidator, UpdateHashRangeKeyValidator)


def _make_update_expression(cls: type[Any], expression_str: Any) -> Any:
    """``UpdateExpressionParser.make``, one (read-only) tree per expression string."""
    if cls is not UpdateExpressionParser or type(expression_str) is not str:
        return _moto_make_update_expression(cls, expression_str)
    tree = _update_trees.get(expression_str)
    if tree is None:
        tree = _moto_make_update_expression(cls, expression_str)
        if len(_update_trees) >= _CACHE_SIZE:
            _update_trees.clear()
            _tree_expressions.clear()
            _passed_checks.clear()
        _update_trees[expression_str] = tree
        _tree_expressions[id(tree)] = (tree, expression_str)
    return tree


def _checks_key(expression: Any, names: Any, table: Any) -> tuple[Any, ...] | None:
    entry = _tree_expressions.get(id(expression))
    if entry is None or entry[0] is not expression:
        return None
    names_key = _strings(names, keys_only=False)
    key_attributes = getattr(table, "table_key_attrs", None)
    if names_key is None or type(key_attributes) is not list:
        return None
    if not all(type(attribute) is str for attribute in key_attributes):
        return None
    return (entry[1], names is None, names_key, tuple(key_attributes))


def _validator_init(  # noqa: PLR0917 - moto's signature
    self: Validator,
    expression: Any,
    expression_attribute_names: Any,
    expression_attribute_values: Any,
    item: Any,
    table: Any,
) -> None:
    """moto's ``Validator.__init__``; also notes which cached expression an update validates."""
    _moto_validator_init(
        self, expression, expression_attribute_names, expression_attribute_values, item, table
    )
    if type(self) is UpdateExpressionValidator:
        key = _checks_key(expression, expression_attribute_names, table)
        if key is not None:
            _validator_checks[self] = key


def _validate(self: Validator) -> Any:
    """moto's ``Validator.validate``, without the pure checks an expression already passed."""
    key = _validator_checks.get(self)
    processors = self.processors
    if key is None or tuple(type(processor) for processor in processors[:3]) != _CHECKS:
        return _moto_validate(self)
    n = self.node_to_validate
    checks, steps = processors[:3], processors[3:]
    if key not in _passed_checks:
        for processor in checks:
            n = processor.traverse(n)
        _passed_checks.add(key)
    # (else: they would each return n unchanged)
    for processor in steps:
        n = processor.traverse(n)
    return n


# -- SQS: no attribute dict for a standard queue's message ---------------------------------------
def _content_based_deduplication(queue: Any) -> bool:
    # Only FIFO queues have the attribute (Queue.FIFO_ATTRIBUTES): for the others .get() is None.
    return bool(queue.fifo_queue) and queue.attributes.get("ContentBasedDeduplication") == "true"


def _send_message(  # noqa: PLR0917 - moto's signature
    self: SQSBackend,
    queue_name: str,
    message_body: str,
    message_attributes: dict[str, Any] | None = None,
    delay_seconds: int | None = None,
    deduplication_id: str | None = None,
    group_id: str | None = None,
    system_attributes: dict[str, Any] | None = None,
    validate_group_id: bool = True,
) -> Any:
    """moto 5.2.5's ``SQSBackend.send_message``; see the module doc for the one change."""
    sqs = _sqs
    queue: Any = self.get_queue(queue_name)

    self._validate_message(
        queue,
        message_body=message_body,
        delay_seconds=int(delay_seconds or 0),
        deduplication_id=deduplication_id,
        group_id=group_id,
        validate_group_id=validate_group_id,
    )

    if delay_seconds is not None:  # noqa: SIM108 - moto's code, as written
        delay_seconds = int(delay_seconds)
    else:
        delay_seconds = queue.delay_seconds

    message_id = str(sqs.random.uuid4())
    message = sqs.Message(message_id, message_body, system_attributes)

    # if content based deduplication is set then set sha256 hash of the message
    # as the deduplication_id
    if _content_based_deduplication(queue):
        sha256 = sqs.hashlib.sha256()
        sha256.update(message_body.encode("utf-8"))
        message.deduplication_id = sha256.hexdigest()

    # Attributes, but not *message* attributes
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(sqs.random.choice(sqs.string.digits) for _ in range(20))

    if group_id is not None:
        message.group_id = group_id

    if message_attributes:
        message.message_attributes = message_attributes

    if delay_seconds > sqs.MAXIMUM_MESSAGE_DELAY:
        msg = (
            f"Value {delay_seconds} for parameter DelaySeconds is invalid. "
            "Reason: DelaySeconds must be >= 0 and <= 900."
        )
        raise sqs.InvalidParameterValue(msg)

    message.mark_sent(delay_seconds=delay_seconds)

    queue.add_message(message)

    return message


_REPLACEMENTS: tuple[Any, ...] = (
    staticmethod(_parse_event_template),
    _method_names_from_class,
    _parse_condition,
    classmethod(_make_update_expression),
    _validator_init,
    _validate,
    _send_message,
)


def _clear_caches() -> None:
    _jsonpath.cache_clear()
    _method_names.clear()
    _conditions.clear()
    _update_trees.clear()
    _tree_expressions.clear()
    _passed_checks.clear()


def install() -> None:
    """Patch moto (idempotent). AttributeError/KeyError if moto moved a target."""
    with _lock:
        for (owner, name), replacement in zip(PATCH_TARGETS, _REPLACEMENTS, strict=True):
            if (owner, name) not in _originals:
                _originals[(owner, name)] = vars(owner)[name]  # KeyError if moto moved it
                setattr(owner, name, replacement)


def uninstall() -> None:
    """Put moto's own functions back (idempotent) and forget what was cached."""
    with _lock:
        for (owner, name), original in list(_originals.items()):
            setattr(owner, name, original)
            del _originals[(owner, name)]
        _clear_caches()


def is_installed() -> bool:
    return all(
        vars(owner).get(name) is replacement
        for (owner, name), replacement in zip(PATCH_TARGETS, _REPLACEMENTS, strict=True)
    )
