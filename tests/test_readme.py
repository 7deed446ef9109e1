"""The README's example runs verbatim, in-process.

Takes the ```python blocks of the repository's README.md in order, skips the ones that talk to
a server, prepends the imports the original README forgot, runs them in one namespace and checks
the answer the README promises.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PRELUDE = "from typing import List, Union\nfrom indexify import indexify_router\n"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def talks_to_a_server(code: str) -> bool:
    remote_client = "create_client(" in code and "in_process=True" not in code
    return remote_client or "requests." in code


def example_blocks() -> list[str]:
    assert README.is_file(), f"{README} is missing; it must contain the usage example"
    blocks = [b for b in BLOCK.findall(README.read_text()) if not talks_to_a_server(b)]
    code = "\n".join(blocks)
    for needed in ('Graph(name="sequence_summer"', "in_process=True", "invoke_graph_with_object"):
        assert needed in code, (
            f"README.md has no ```python block containing {needed!r}: it must show the "
            "'Create a Compute Graph', 'Register' and 'Invoke the Graph in-process' examples"
        )
    return blocks


def test_readme_example_runs_in_process() -> None:
    namespace: dict[str, object] = {"__name__": "readme_example"}
    for index, block in enumerate(example_blocks()):
        code = compile(PRELUDE + block, f"README.md python block {index + 1}", "exec")
        exec(code, namespace)

    client = namespace["client"]
    invocation_id = namespace["invocation_id"]
    assert client.graph_outputs("sequence_summer", invocation_id, "squared") == [2025]  # type: ignore[attr-defined]
    assert client.graph_outputs("sequence_summer", invocation_id, "tripled") == []  # type: ignore[attr-defined]
    assert namespace["result"] == [2025]
