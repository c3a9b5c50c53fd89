"""tools/structure.py, the import drawing `make lint` checks: it must see a circle where one is."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "structure.py"


def run(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), "--check", "--src", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(tree: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_repository_has_no_circle():
    result = run(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no circle" in result.stdout


def test_a_circle_through_a_re_export_is_found(tmp_path):
    write(
        tmp_path,
        {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a/mod.rs": "mod inner;\npub use inner::Thing;\n",
            "a/inner.rs": "use crate::b::Other;\npub struct Thing(Other);\n",
            # b imports a's re-export: the edge must reach a/inner.rs, closing the circle.
            "b.rs": "// use crate::c::Ignored; (a comment)\nuse crate::a::Thing;\npub struct Other;\n"
            "pub fn f(_: Thing) {}\n",
        },
    )
    result = run(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "circle between files: a/inner.rs <-> b.rs" in result.stdout
    assert "circle between modules: a <-> b" in result.stdout


def test_test_modules_and_strings_are_not_imports(tmp_path):
    write(
        tmp_path,
        {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "use crate::b::B;\npub struct A(B);\n",
            "b.rs": 'pub struct B;\nconst S: &str = "crate::a::A";\n'
            "#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
        },
    )
    result = run(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "no circle" in result.stdout
