"""Progress reporting shared by the long-running loops (training, grid optimisation)."""

from __future__ import annotations

PROGRESS = ("auto", "bar", "log", "none")
"""``progress=`` choices: a tqdm bar on a terminal and log lines otherwise, or either one,
or nothing."""


class Progress:
    """tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, mode: str, total: int, initial: int, stream, unit: str = "step"):
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "log"
        self.mode, self.stream = mode, stream
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, file=stream, unit=unit,
                            dynamic_ncols=True)

    def update(self, step: int, total: int, fields: dict[str, float], n: int):
        text = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            print(f"step {step}/{total} {text}", file=self.stream, flush=True)

    def write(self, line: str):
        if self.bar is not None:
            self.bar.write(line)
        elif self.mode == "log":
            print(line, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
