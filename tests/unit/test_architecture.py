"""The tree tells the story: imports point one way, and the API starts without Pipecat.

api, cli -> workflows, bot, telephony, auth, exporters, reconcile, billing -> analytics -> metering
-> db, net -> config
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from flow.db.call_state import CallStatus, EndReason

FLOW = Path(__file__).resolve().parents[2] / "flow"

# A package may import its own layer and every layer below it, never one above.
LAYERS = {
    "config": 0,
    "logs": 0,
    "metrics": 0,
    "db": 1,
    "net": 1,
    "metering": 2,
    "analytics": 3,
    "auth": 4,
    "bot": 4,
    "exporters": 4,
    "telephony": 4,
    "workflows": 4,
    "reconcile": 4,
    "billing": 4,
    "api": 5,
    "cli": 5,
    "main": 5,
    "server": 5,
    "demo": 5,
    "localstack": 5,
    "dashboard": 5,
}


def package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def flow_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flow":
                found.update(f"flow.{alias.name}" for alias in node.names)
            elif node.module.startswith("flow."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flow."))
    return found


def test_imports_point_one_way() -> None:
    wrong = []
    for path in sorted(FLOW.rglob("*.py")):
        rel = path.relative_to(FLOW.parent).with_suffix("")
        own = package_of(".".join(rel.parts)) or rel.parts[-1]
        if own == "__init__":
            continue
        assert own in LAYERS, f"{path}: place the package {own!r} in a layer"
        for imported in flow_imports(path):
            theirs = package_of(imported)
            if LAYERS.get(theirs, 0) > LAYERS[own]:
                wrong.append(f"{rel}: {own} imports {imported}")
    assert wrong == []


def test_the_api_imports_no_pipecat() -> None:
    code = (
        "import sys, flow.main, flow.api.routes.bots; "
        "print(sorted(m for m in sys.modules if m.startswith('pipecat'))[:3])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=FLOW.parent,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_no_module_is_too_long_to_read() -> None:
    long = {
        str(p.relative_to(FLOW.parent)): n
        for p in FLOW.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


# Where a call status's word means something else: Twilio's call statuses, a WebRTC
# peer connection's state, the join's budget refusal code.
OTHER_MEANINGS = {
    ("telephony/twilio_api.py", "ringing"),
    ("telephony/twilio_api.py", "completed"),
    ("api/routes/telephony.py", "failed"),
    ("api/routes/telephony.py", "completed"),
    ("bot/webrtc.py", "failed"),
    ("api/routes/admission.py", "budget_exhausted"),
    ("api/routes/bots.py", "budget_exhausted"),
}


def test_call_statuses_are_written_only_as_the_enum() -> None:
    """A thread's status (and its distinctive end reasons) is named through
    :mod:`flow.db.call_state`'s enums, never as a string of its own."""
    words = {str(s) for s in CallStatus} | {
        str(r) for r in (EndReason.MAX_DURATION, EndReason.BUDGET_EXHAUSTED)
    }
    found = []
    for path in sorted(FLOW.rglob("*.py")):
        rel = str(path.relative_to(FLOW))
        if rel == "db/call_state.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in words:
                if (rel, node.value) not in OTHER_MEANINGS:
                    found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []
