"""The batch test's chart stays readable at the extremes: all-zero scores (a broken model) and the narrow
perplexity panel beside the scores."""
import pytest

from psydt_lora.evaluation import report

SCORES = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL", "chrf")


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """The figure plot_metrics draws, rendered, instead of saved."""
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: (fig.canvas.draw(), figures.append(fig)))

    def draw(summaries):
        report.plot_metrics(summaries, tmp_path / "chart.png")
        return figures[-1]

    yield draw
    for fig in figures:
        report.pyplot().close(fig)


def test_all_zero_scores_get_a_plain_axis(drawn):
    zero = {k: 0.0 for k in SCORES}
    fig = drawn({"base": {**zero, "ppl": 3.1}, "lora": {**zero, "ppl": 2.4}})
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.yaxis.get_offset_text().get_text() == ""  # no "1e-6" over a 0-100 axis
    assert max(float(t.get_text().replace("−", "-")) for t in ax.get_yticklabels() if t.get_text()) <= 1.0


def test_perplexity_title_is_inside_the_figure(drawn):
    fig = drawn({"base": {**{k: 12.0 for k in SCORES}, "ppl": 31.7}, "lora": {**{k: 20.0 for k in SCORES}, "ppl": 9.2}})
    renderer = fig.canvas.get_renderer()
    title = fig.axes[1].title.get_window_extent(renderer)
    page = fig.bbox
    assert title.x0 >= page.x0 and title.x1 <= page.x1, (title, page)
