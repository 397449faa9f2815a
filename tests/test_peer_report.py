"""The peer benchmark's report (``benchmarks/peers.py``), without torch: every cell above the
slack is listed, with the reasons the data give (one of our rules, set as the peer sets it,
closes the gap; more mode flips; a trade-off on the same grid; a peer that is not monotone in
the NFE) and none where the data give none."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402


def _cell(problem, nfe, ours, peer, flips=(0, 0), no_flip=None, grid="log_snr"):
    no_flip = no_flip or (ours, peer)
    return {"problem": problem, "schedule": "vp_linear", "grid": grid, "steps": nfe, "nfe": nfe,
            "ours": {"rmse": ours, "flips": flips[0], "rmse_no_flip": no_flip[0]},
            "peer": {"rmse": peer, "flips": flips[1], "rmse_no_flip": no_flip[1]},
            "ratio": ours / peer}


def _why(cells, alts=()):
    return {(c["problem"], c["grid"], c["nfe"]): why for c, why in peers.reasons(cells, alts)}


def test_reasons_name_flips_trade_offs_and_peer_jumps():
    cells = [
        _cell("ring2d", 5, 1.2, 1.0),  # peer jumps x1.5 at NFE 6; gmm64 wins here
        _cell("gmm64", 5, 0.8, 1.0),
        _cell("ring2d", 6, 1.5, 1.5),
        _cell("gmm64", 6, 1.5, 1.0, flips=(3, 1), no_flip=(0.9, 1.0)),  # flips only
        _cell("ring2d", 8, 0.5, 0.5),
        _cell("gmm64", 8, 1.1, 1.0),  # nothing explains it
        _cell("ring2d", 5, 1.01, 1.0, grid="edm"),  # within the slack: not listed
    ]
    why = _why(cells)
    assert set(why) == {("ring2d", "log_snr", 5), ("gmm64", "log_snr", 6),
                        ("gmm64", "log_snr", 8)}
    assert why[("ring2d", "log_snr", 5)] == [
        "trade-off: gmm64 on the same grid and NFE 0.800",
        "peer not monotone: its RMSE x1.50 at NFE 6"]
    assert why[("gmm64", "log_snr", 6)] == ["flips 3/1 (without them 0.900)"]
    assert why[("gmm64", "log_snr", 8)] == []
    lines = peers._reason_lines(cells)
    assert lines[0].startswith("Cells above 1.02 and why (3; no reason found in the data for 1)")
    assert "| gmm64/vp_linear log_snr NFE 8 | 1.100 | none found |" in lines
    assert peers._reason_lines(cells[4:5] + cells[6:]) == []


def test_reasons_name_the_rule_that_makes_the_difference():
    """A variant of ours with one rule set as the peer's (an ablation) that is within the
    slack at a cell names that rule; a variant still above it does not; each variant's
    totals over the pair follow the table."""
    cells = [_cell("ring2d", 8, 1.3, 1.0), _cell("ring2d", 10, 1.2, 1.0)]
    alts = [("with the peer's rule A", [_cell("ring2d", 8, 1.0, 1.0),
                                        _cell("ring2d", 10, 2.0, 1.0)]),
            ("with the peer's rule B", [_cell("ring2d", 8, 1.05, 1.0)])]
    why = _why(cells, alts)
    assert why[("ring2d", "log_snr", 8)] == ["with the peer's rule A: 1.000"]
    assert why[("ring2d", "log_snr", 10)] == []
    lines = peers._reason_lines(cells, alts)
    assert "| ours as it is | 1.249 | 1.300 | ring2d/vp_linear log_snr NFE 8 | 2 |" in lines
    assert "| with the peer's rule A | 1.414 | 2.000 | ring2d/vp_linear log_snr NFE 10 | 1 |" \
        in lines
    assert "| with the peer's rule B | 1.050 | 1.050 | ring2d/vp_linear log_snr NFE 8 | 1 |" \
        in lines
