#!/usr/bin/env python3
"""Summarise an irctest junit XML file: counts, and the failing tests.

usage: summarize.py LABEL FILE.xml [--list] [--only-files f1,f2]
"""
import sys
import xml.etree.ElementTree as ET


def classify(tc):
    for child in tc:
        tag = child.tag
        if tag == "failure":
            msg = child.get("message", "")
            if msg.startswith("[XPASS(strict)]"):
                return "xpassed", msg
            return "failed", msg
        if tag == "error":
            return "error", child.get("message", "")
        if tag == "skipped":
            if child.get("type") == "pytest.xfail":
                return "xfailed", child.get("message", "")
            return "skipped", child.get("message", "")
    return "passed", ""


def main():
    label, path = sys.argv[1], sys.argv[2]
    show_list = "--list" in sys.argv
    root = ET.parse(path).getroot()
    # junit has a second <testcase> for a teardown error of a failed test:
    # keep one state per test (failed > error > others).
    rank = {"failed": 0, "error": 1, "xpassed": 2, "xfailed": 3, "skipped": 4, "passed": 5}
    per = {}
    for tc in root.iter("testcase"):
        state, msg = classify(tc)
        name = f"{tc.get('classname')}::{tc.get('name')}"
        if name not in per or rank[state] < rank[per[name][0]]:
            per[name] = (state, msg)
    counts = {}
    bad = []
    for name, (state, msg) in per.items():
        counts[state] = counts.get(state, 0) + 1
        if state in ("failed", "error"):
            bad.append((state, name, msg.splitlines()[0] if msg else ""))
    total = sum(counts.values())
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    parts = [f"{k}={counts.get(k, 0)}" for k in order]
    print(f"{label}: total={total} " + " ".join(parts))
    if show_list:
        for state, name, msg in bad:
            print(f"  {state.upper():6} {name}  -- {msg[:160]}")


if __name__ == "__main__":
    main()
