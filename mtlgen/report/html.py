"""Self-contained HTML: a patient page and the cohort index (inline CSS and JS, images beside
the page, no external URL)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from string import Template

from mtlgen.progression import STATUSES
from mtlgen.report.summary import PROBABILITY_SOURCES, PatientSummary, due_date_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td.num{text-align:right}
.status{padding:2px 8px;border-radius:4px;font-weight:600}
.progressive{background:#f0b3ad}.stable{background:#e0e0e0}.responding{background:#b5dcbd}
.note{color:#666;font-size:.9em}.review{color:#a33}
img{max-width:100%;border:1px solid #eee}
"""

_PATIENT = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Patient $patient</title><style>$css</style></head>
<body>
<p><a href="../../index.html">&larr; cohort</a></p>
<h1>Patient <code>$patient</code> <span class="status $status_class" id="status">$status</span></h1>
<p>Status of the last measured visit against the one before: progressive if the lesion core grew
by at least $increase, responding if it shrank by at least $decrease (params.yaml
<code>progression</code>). Next visit due: <b id="due">$due</b>.</p>
<h2>Volume trajectory</h2>
<img id="trajectory" src="trajectory.png" alt="lesion-core volume over time">
<p>$growth</p>
<h2>Forecast at the next due date</h2>
$forecast
<h2>Visits</h2>
$visits
<h2>Slices of every visit</h2>
$montage
<h2>Awaiting review</h2>
$review
<h2>Provenance</h2>
<table id="provenance">$provenance</table>
</body></html>
""")

_INDEX = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Cohort report</title><style>$css
th.sort{cursor:pointer}th.sort:after{content:" \\2195";color:#aaa}
#pager button{margin:0 .3em}
</style></head>
<body>
<h1>Cohort report</h1>
<p id="counts">$counts</p>
<p class="note">$provenance</p>
<p><input id="filter" placeholder="filter patients" oninput="show(0)"> <span id="pager"></span></p>
<table id="patients"><thead><tr>
<th class="sort" data-key="patient">patient</th><th class="sort" data-key="status">status</th>
<th class="sort" data-key="forecast">forecast status</th>
<th class="sort" data-key="rate">growth (mL/year)</th>
<th class="sort" data-key="doubling">doubling time (days; &minus;: halving)</th>
<th class="sort" data-key="visits">visits</th><th class="sort" data-key="due">next due</th>
<th class="sort" data-key="review">awaiting review</th>
</tr></thead><tbody></tbody></table>
<script>
const rows = $rows;
const pageSize = $page_size;
let order = {key: "status", dir: 1}, page = 0, view = rows;
const cmp = (a, b) => (a === null) - (b === null) || (a < b ? -1 : a > b ? 1 : 0);
function cell(v, cls) {
  const td = document.createElement("td");
  td.textContent = v === null ? "-" : v;
  if (cls) td.className = cls;
  return td;
}
function show(p) {
  const q = document.getElementById("filter").value.trim().toLowerCase();
  view = rows.filter(r => !q || r.patient.includes(q) || String(r.status).includes(q));
  view.sort((a, b) => order.dir * cmp(a[order.key], b[order.key]) || cmp(a.patient, b.patient));
  const pages = Math.max(1, Math.ceil(view.length / pageSize));
  page = Math.min(Math.max(p, 0), pages - 1);
  const body = document.querySelector("#patients tbody"); body.replaceChildren();
  for (const r of view.slice(page * pageSize, (page + 1) * pageSize)) {
    const tr = document.createElement("tr"), td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "patients/" + r.patient + "/index.html";
    a.textContent = r.patient;
    td.append(a);
    tr.append(td);
    tr.append(cell(r.status, "status " + (r.status || "")), cell(r.forecast), cell(r.rate, "num"),
      cell(r.doubling, "num"), cell(r.visits, "num"), cell(r.due_text), cell(r.review, "num"));
    body.append(tr);
  }
  document.getElementById("pager").innerHTML = view.length + " patients, page " + (page + 1) +
    " of " + pages + ' <button id="prev" onclick="show(page-1)">&lt;</button>' +
    '<button id="next" onclick="show(page+1)">&gt;</button>';
}
for (const th of document.querySelectorAll("th.sort")) th.onclick = () => {
  order = {key: th.dataset.key, dir: order.key === th.dataset.key ? -order.dir : 1}; show(0); };
show(0);
</script>
<noscript>This table needs JavaScript; every page is under patients/.</noscript>
</body></html>
""")


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], id_: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{id_}"><tr>{head}</tr>{body}</table>'


def model_text(model: Mapping[str, str] | None) -> str:
    """A model's description, e.g. ``model_name mtlgen-mtl, version 3, alias champion``."""
    return ", ".join(f"{k} {v}" for k, v in (model or {}).items()) or "no model"


def growth_text(summary: PatientSummary) -> str:
    """One sentence on the growth fitted over the measured visits."""
    g = summary.growth
    if g is None:
        return "Growth: fewer than two measured visits."
    text = (
        f"Growth over {g.visits} measured visits (least squares): "
        f'<b id="rate">{g.rate_ml_per_year:+.2f} mL/year</b>'
    )
    if g.doubling_days is not None:
        kind = "doubling" if g.doubling_days > 0 else "halving"
        text += f', volume {kind} time <b id="doubling">{abs(g.doubling_days):.0f} days</b>'
        text += f" (log-linear fit, {g.log_rate_per_year:+.3f} per year)"
    return text + "."


def _forecast(summary: PatientSummary) -> str:
    f = summary.forecast
    if f is None:
        return '<p id="forecast">No model: no forecast.</p>'
    interval = "no interval"
    if f.low_ml is not None:
        high = "unbounded" if f.high_ml is None else f"{f.high_ml:.2f}"
        interval = f"{f.low_ml:.2f}-{high} mL ({f.level:.0%} interval)"
    probs = "the model's calibration gives no interval: no status probabilities"
    if f.probabilities:
        shares = ", ".join(f"{s} {f.probabilities[s]:.0%}" for s in STATUSES)
        probs = f"Status probabilities ({PROBABILITY_SOURCES[f.probability_source]}): {shares}"
    model = escape(model_text(f.model))
    return (
        f'<p id="forecast">Model ({model}) at day {f.target_days:.0f} '
        f"({escape(due_date_text(summary))}): "
        f"lesion core <b>{f.core_ml:.2f} mL</b>, {escape(interval)}, status "
        f'<span class="status {f.status}">{f.status}</span>.<br>{escape(probs)}.</p>'
    )


def patient_page(
    summary: PatientSummary, provenance: Mapping[str, str], montage: bool = True
) -> str:
    """The HTML of a patient page; its images are ``trajectory.png`` and (with ``montage``,
    when the patient has a processed visit) ``montage.png``."""
    visits = [
        [
            escape(v.key),
            escape(v.date.isoformat() if v.date else "-"),
            f"{v.days:.0f}",
            escape(
                ", ".join(c if c in v.contrasts else f"({c} missing)" for c in summary.contrasts)
            ),
            _num(v.core_ml),
            _num(v.lesion_ml),
            escape({"label": "label", "model": "model segmentation"}.get(v.source, "not measured")),
            _num(v.ncc, ".3f"),
            _num(v.mi, ".3f"),
        ]
        for v in summary.visits
    ]
    review = (
        '<ul class="review">' + "".join(f"<li>{escape(r)}</li>" for r in summary.review) + "</ul>"
        if summary.review
        else "<p>Nothing awaits review.</p>"
    )
    status = summary.status or "not enough measured visits"
    slices = "<p>No processed visit to show.</p>"
    if montage:
        slices = (
            '<img id="montage" src="montage.png" alt="axial slices of every visit with lesion '
            'outlines"><p class="note">On the baseline-aligned grid; lesion core outlined red, '
            "edema yellow; a contrast a visit lacks is a dashed panel marked missing."
            + (" The model gives no uncertainty map." if summary.forecast else "")
            + "</p>"
        )
    return _PATIENT.substitute(
        patient=escape(summary.patient),
        css=_CSS,
        status=escape(status),
        status_class=escape(summary.status or ""),
        increase=f"{summary.increase:.0%}",
        decrease=f"{summary.decrease:.0%}",
        due=escape(due_date_text(summary)),
        growth=growth_text(summary),
        forecast=_forecast(summary)
        + "".join(f'<p class="note">{escape(n)}</p>' for n in summary.notes),
        visits=_table(
            [
                "visit",
                "date",
                "day",
                "contrasts",
                "core (mL)",
                "whole lesion (mL)",
                "measured from",
                "NCC",
                "MI",
            ],
            visits,
            "visits",
        ),
        montage=slices,
        review=review,
        provenance="".join(
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in provenance.items()
        ),
    )


def index_page(rows: list[dict], provenance: str, page_size: int) -> str:
    """The cohort index: counts per status and a sortable, filterable, paginated table of
    ``rows`` (one dict per patient, see ``mtlgen.report.build.index_row``)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"] or "not measured"] = counts.get(r["status"] or "not measured", 0) + 1
    order = [*STATUSES, *sorted(set(counts) - set(STATUSES))]
    text = ", ".join(
        f'<span class="status {escape(k)}" data-status="{escape(k)}">{escape(k)}: '
        f"{counts[k]}</span>"
        for k in order
        if k in counts
    )
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    return _INDEX.substitute(
        css=_CSS,
        counts=f"{len(rows)} patients: {text}",
        provenance=escape(provenance),
        rows=data,
        page_size=page_size,
    )
