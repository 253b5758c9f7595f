"""The project's files agree with each other: pins, schema, README commands, CI."""
from __future__ import annotations

import tomllib

import yaml

from conftest import REPO
from mimic_redundancy.pipeline import config as cfg


def test_conda_env_pins_match_the_python_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs/pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert all("==" in p for p in project), "every dependency is pinned exactly"
    assert sorted(p.lower() for p in pip) == sorted(p.lower() for p in project)
    sim = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["sim"]
    env = yaml.safe_load((REPO / "envs/sim.yaml").read_text())  # the closed loop's rules: the pipeline + the simulator
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p.lower() for p in pip) == sorted(p.lower() for p in project + sim)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(sim) == set(extras["metaworld"]) | set(extras["libero"]), "sim: both simulators, pinned alike"


def test_default_config_is_valid_and_complete():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    filled = cfg.validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert config["presets"]["trained"]["checkpoint"] == "results/{preset}/train/checkpoint"  # the selected preset's
    config["presets"]["trained"]["checkpoint"] = f"results/{config['preset']}/train/seed-0/checkpoint"  # train.seeds[0]
    assert filled["sim"].pop("tasks") == {"button-press-topdown-v3": "press the button down from the top"}
    assert "tasks" not in config["sim"], "sim.tasks stays out of config.yaml: merged with a --configfile's, they join"
    assert filled == config, "config.yaml spells out every other key (the schema's defaults add nothing)"
    assert config["preset"] == "tiny" and len(cfg.samples(config)) >= 8


def test_readme_commands_and_ci():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci/run").read_text()


# A dry run in one Python process, then a look at what it imported: the DAG build (rules/common.smk, config.py and
# every params function) must not pay for torch (~2 s and ~300 MB per Snakemake start, Slurm jobs included).
NO_TORCH_PROBE = """
import atexit, os, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.__stderr__, flush=True))
from snakemake.cli import main
sys.argv = ["snakemake", "--profile", "profiles/local", "-n", *sys.argv[1:]]
main()
"""


def test_the_dag_build_imports_no_torch(workflow):
    """The embedded default's whole DAG (both presets, training, compare) is built without importing torch."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE], cwd=workflow, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "train" in output and "compare" in output, output[-3000:]  # the whole default DAG was planned
    assert "torch imported: False" in output, output[-3000:]


def test_the_npz_contract_in_the_docs_is_the_one_io_checks():
    from mimic_redundancy.core.io import contract_markdown

    text = (REPO / "docs/npz.md").read_text()
    generated = text.split("<!-- generated: mimic_redundancy.core.io.contract_markdown() -->\n", 1)[1]
    generated = generated.split("<!-- end generated -->", 1)[0]
    assert generated == contract_markdown(), "docs/npz.md is stale: regenerate it with the command it gives"


def test_the_readme_is_a_five_minute_read_and_its_links_resolve():
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to {link}, which does not exist"
    index = (REPO / "docs/README.md").read_text()
    unlisted = [p.name for p in pages[1:] if p.name != "README.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not list {unlisted}"


# The package by concept (docs/pipeline.md, "The package"): each floor imports only the floors below it, lazy imports
# inside functions included, and no two modules import each other through any path.
FLOORS = ["core", "data", "model", "analysis", "report", "sim", "pipeline", "tools"]


def _package_imports() -> dict[str, set[str]]:
    import ast

    src = REPO / "src"
    graph = {}
    for path in sorted((src / "mimic_redundancy").rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import; the package imports by absolute name"
                base = node.module or ""
                modules = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            found |= {m for m in modules if m.startswith("mimic_redundancy.")}
        graph[name] = found
    # `from mimic_redundancy.core import io` names a module; `from mimic_redundancy.core.io import X` names an attribute
    return {name: {m for m in found if m in graph} for name, found in graph.items()}


def _floor(module: str) -> int:
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in FLOORS, f"{module}: outside the floors {FLOORS} (docs/pipeline.md)"
    return FLOORS.index(parts[1])


def test_every_floor_imports_only_the_floors_below_it_and_no_module_imports_itself_back():
    graph = _package_imports()
    modules = [m for m in graph if m.count(".") >= 2]  # the package and floors' __init__ hold no code
    assert len(modules) >= 30
    upward = [f"{m} -> {t}" for m in modules for t in graph[m] if _floor(t) > _floor(m)]
    assert upward == [], f"imports that run up a floor: {upward}"

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(m for m in modules if m in reach(m))
    assert cycles == [], f"modules that import themselves back through others: {cycles}"


def test_the_layering_check_sees_a_lazy_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a copy of the package with one lazy upward import and one cycle added."""
    import shutil

    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    io_py = tmp_path / "src/mimic_redundancy/core/io.py"
    io_py.write_text(io_py.read_text() + "\n\ndef _late():\n    from mimic_redundancy.pipeline import config\n")
    readers = tmp_path / "src/mimic_redundancy/data/readers.py"
    readers.write_text(readers.read_text() + "\n\ndef _back():\n    from mimic_redundancy.data import sources\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    graph = _package_imports()
    assert "mimic_redundancy.pipeline.config" in graph["mimic_redundancy.core.io"]
    try:
        test_every_floor_imports_only_the_floors_below_it_and_no_module_imports_itself_back()
    except AssertionError as error:
        assert "core.io -> mimic_redundancy.pipeline.config" in str(error)
    else:
        raise AssertionError("the layering check passed a package with an upward import")
    io_py.write_text(io_py.read_text().replace("from mimic_redundancy.pipeline import config", "pass"))
    try:
        test_every_floor_imports_only_the_floors_below_it_and_no_module_imports_itself_back()
    except AssertionError as error:
        assert "mimic_redundancy.data.readers" in str(error) and "import themselves back" in str(error)
    else:
        raise AssertionError("the layering check passed a package with a cycle")
