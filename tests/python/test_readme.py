#!/usr/bin/env python3
"""The README's C++ example is the program the consumer tests build and run: keep them equal."""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
blocks = re.findall(r"```cpp\n(.*?)```", readme, re.S)
example = open(os.path.join(root, "tests", "consumer", "readme_example.cpp"), encoding="utf-8").read()
if not blocks:
    print("README.md has no ```cpp block")
    sys.exit(1)
if blocks[0] != example:
    print("README.md's first C++ block differs from tests/consumer/readme_example.cpp")
    sys.exit(1)
# The README also promises the first two commands: keep them the scripts CI runs.
if "bash scripts/demo.sh" not in readme.split("\n## ")[0] or "bash scripts/test.sh" not in readme.split("\n## ")[0]:
    print("README.md no longer starts with the demo and test commands")
    sys.exit(1)
print("README example and commands: ok")
