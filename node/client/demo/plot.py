"""PNG plot of a demo run: running loss and held-out accuracy over time.

matplotlib is imported lazily and forced onto the Agg backend: the demo runs
on headless machines and in CI, where an interactive backend would fail or
try to open a window.
"""

from __future__ import annotations

from pathlib import Path

from ..liveview import History


def plot_run(
    history: History,
    path: str | Path,
    *,
    acc_before: float | None,
    acc_after: float | None,
    t_end: float | None = None,
    title: str = "onebyte demo",
) -> Path:
    """Write the plot to `path` and return it.

    Times are seconds since training started. Left panel: each node's running
    loss (the mean of l+ and l- over its recent local steps). Right panel: the
    nodes' periodic held-out evaluations, with the zero-shot accuracy of the
    base model as a dashed line and the final accuracy of the exported weights
    as a star at `t_end` (when the producers stopped).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    evals: list[tuple[float, float]] = []
    for i, node in enumerate(history.nodes()):
        colour = f"C{i % 10}"
        xs, ys = history.loss_series(node)
        if xs:
            ax_loss.plot(xs, ys, label=node, linewidth=1.2, color=colour)
        xs, ys = history.accuracy_series(node)
        if xs:
            ax_acc.plot(xs, [y * 100 for y in ys], marker="o", markersize=5, linestyle="none", color=colour,
                        label=f"{node} eval")
            evals += zip(xs, ys)
    # The replicas differ only by updates in flight, so their evaluations are samples of one
    # swarm-wide curve: join them in time order, starting from the zero-shot point.
    evals.sort()
    if acc_before is not None:
        evals.insert(0, (0.0, acc_before))
    if evals:
        ax_acc.plot([x for x, _ in evals], [y * 100 for _, y in evals], color="black", linewidth=0.8, alpha=0.6)
    ax_loss.set_xlabel("seconds since training started")
    ax_loss.set_ylabel("running training loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    if history.nodes():
        ax_loss.legend(fontsize=8)

    if acc_before is not None:
        ax_acc.axhline(acc_before * 100, linestyle="--", color="grey", label=f"zero-shot {acc_before * 100:.1f}%")
    if acc_after is not None:
        x = t_end if t_end is not None else max((s.t for s in history.samples), default=0.0)
        ax_acc.plot([x], [acc_after * 100], marker="*", markersize=14, color="crimson", linestyle="none",
                    label=f"final {acc_after * 100:.1f}%")
    ax_acc.set_xlabel("seconds since training started")
    ax_acc.set_ylabel("held-out accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
