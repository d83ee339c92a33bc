"""The public surface of ``clusterchat.protocol`` and its sans-I/O rule, pinned."""

import ast
import importlib
from pathlib import Path

import pytest

import clusterchat.protocol

PUBLIC_NAMES = [
    "Ack",
    "AddFriend",
    "AddFriendAck",
    "AddGroup",
    "AddGroupAck",
    "Answer",
    "CLASSIC_FRAME_MAX",
    "ChatMessage",
    "CreateGroup",
    "CreateGroupAck",
    "Error",
    "ErrorCode",
    "FramingError",
    "FriendEntry",
    "FriendRequest",
    "GroupChat",
    "GroupChatAck",
    "GroupEntry",
    "GroupInvite",
    "InvalidMessage",
    "Invite",
    "InviteAck",
    "JsonStreamDecoder",
    "Limits",
    "Login",
    "LoginAck",
    "Logout",
    "LogoutAck",
    "MAX_ID",
    "MAX_POSITION",
    "MemberEntry",
    "Message",
    "MsgId",
    "OFFLINE",
    "ONLINE",
    "OneChat",
    "OneChatAck",
    "Outbound",
    "Ping",
    "Pong",
    "ProtocolError",
    "RegAck",
    "Register",
    "Request",
    "RequestEntry",
    "ServerMessage",
    "classic_frame",
    "decode_request",
    "decode_server_message",
    "encode",
    "encode_entry",
    "error_answer",
    "ndjson_line",
    "split_classic",
]

PACKAGE_DIR = Path(clusterchat.protocol.__file__).parent
MODULES = sorted(PACKAGE_DIR.glob("*.py"))
#: Top-level modules the protocol must never import: it is pure, sans I/O.
FORBIDDEN = {"asyncio", "socket", "selectors", "ssl", "redis", "sqlalchemy", "websockets"}
FORBIDDEN_SUBMODULES = {"logging.handlers", "logging.config"}


def test_public_names_are_pinned() -> None:
    """``__all__`` is exactly the reviewed list: adding or removing a name is a decision."""
    assert sorted(clusterchat.protocol.__all__) == PUBLIC_NAMES
    assert len(set(clusterchat.protocol.__all__)) == len(clusterchat.protocol.__all__)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_importable(name: str) -> None:
    """Every public name can be imported from the package."""
    namespace: dict[str, object] = {}
    exec(f"from clusterchat.protocol import {name}", namespace)
    assert namespace[name] is getattr(clusterchat.protocol, name)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any place in the file."""
    package = "clusterchat.protocol"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The import scanner finds plain, from, relative and nested imports (so the rule can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio\nfrom logging import handlers\nfrom . import codec\n"
        "def f() -> None:\n    import socket\n"
    )
    found = imported_modules(sample)
    assert {"asyncio", "logging.handlers", "clusterchat.protocol.codec", "socket"} <= found


@pytest.mark.parametrize("path", MODULES, ids=[path.name for path in MODULES])
def test_protocol_module_is_sans_io(path: Path) -> None:
    """No protocol module imports asyncio, sockets, logging handlers, redis, SQL or websockets."""
    names = imported_modules(path)
    assert not {name for name in names if name.split(".")[0] in FORBIDDEN}
    assert not {name for name in names if name in FORBIDDEN_SUBMODULES}
    assert "importlib" not in {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", MODULES, ids=[path.name for path in MODULES])
def test_protocol_imports_nothing_else_of_ours(path: Path) -> None:
    """The protocol is the bottom layer: of clusterchat it imports only itself."""
    ours = {name for name in imported_modules(path) if name.split(".")[0] == "clusterchat"}
    assert all(name.startswith("clusterchat.protocol") for name in ours)


@pytest.mark.parametrize("path", MODULES, ids=[path.name for path in MODULES])
def test_protocol_module_has_docstring_and_all(path: Path) -> None:
    """Every protocol module says what it is and declares ``__all__`` of names it defines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree)
    module = importlib.import_module(f"clusterchat.protocol.{path.stem}".removesuffix(".__init__"))
    exported: list[str] = module.__all__
    assert all(hasattr(module, name) for name in exported)
