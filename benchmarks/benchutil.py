"""Small helpers shared by the benchmark scripts (standard library only, so a script can import
this before it sets thread variables and imports torch)."""


def rss_mb():
    """Current resident set size (VmRSS) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def arch_list(parser, text, choices):
    """The comma-separated --archs value as a list; parser.error() for a name not in choices."""
    archs = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in archs if s not in choices]
    if bad:
        parser.error(f"unknown arch {', '.join(bad)} (choose from {', '.join(choices)})")
    return archs


def cpuinfo():
    """(model name, set of CPU flags) of the first processor in /proc/cpuinfo; ("unknown", set())
    when it cannot be read."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif key == "flags" and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags
