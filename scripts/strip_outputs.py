"""Strip outputs and execution counts from notebooks (they are stored clean; the build and nbval
produce the outputs). Usage: python scripts/strip_outputs.py book/*.ipynb"""
import json
import sys


def strip(path):
    """Rewrite one notebook without outputs; return True if it changed."""
    with open(path) as f:
        nb = json.load(f)
    before = json.dumps(nb, sort_keys=True)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    if json.dumps(nb, sort_keys=True) == before:
        return False
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return True


if __name__ == "__main__":
    for p in sys.argv[1:]:
        if strip(p):
            print("stripped", p)
