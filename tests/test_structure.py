"""The shape docs/ARCHITECTURE.md describes, checked on the code: imports between rooms go one
way (a room imports only rooms listed before it), and no two modules of a room import each
other, directly or around a circle (lazy imports inside functions count too)."""
import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "llava_moslora"
ROOMS = ["adapters", "optim", "data", "model", "train", "evaluation", "serve", "demo", "study"]


def imports(path: Path) -> set[str]:
    """Dotted llava_moslora modules `path` imports (relative imports resolved)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found |= {".".join(base + [alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llava_moslora"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("llava_moslora")}
    return found


def room_of(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_rooms_import_only_rooms_before_them():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        here = room_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if here is None:
            continue
        for target in imports(path):
            there = room_of(target)
            if there is not None and there != here and ROOMS.index(there) > ROOMS.index(here):
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_no_import_circle_inside_a_room():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py"}
    graph = {m: {t for t in imports(p) if t in modules and room_of(t) == room_of(m) and t != m}
             for m, p in modules.items()}

    def circle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in map(circle_from, graph) if c]
    assert not circles, circles[0]


def test_the_shared_names_import_nothing_and_name_what_is_defined():
    """llava_moslora/names.py is read by the launch checks and every --help: it imports nothing."""
    tree = ast.parse((PACKAGE / "names.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    from llava_moslora.data.templates import TEMPLATES
    from llava_moslora.names import TEMPLATE_NAMES

    assert sorted(TEMPLATE_NAMES) == sorted(TEMPLATES)
