/* The report: a run's manifest (embedded as JSON) drawn as a timeline, charts and tables. */
"use strict";

(() => {
  const { el, set, number, bytes, seconds, money, isError, colors } = corral;
  const run = JSON.parse(document.getElementById("corral-data").textContent);
  const stages = run.stages || [];
  const manyStages = stages.length > 1;

  /* Every attempt, flat, with where it belongs. */
  const attempts = [];
  for (const stage of stages) {
    for (const [task, record] of Object.entries(stage.tasks || {})) {
      for (const a of record.attempts || []) {
        const stats = a.stats || {};
        attempts.push({
          stage: stage.stage, phase: record.phase, task, label: manyStages ? `${stage.stage + 1}:${task}` : task,
          attempt: a.attempt, status: a.status || "running", start: a.start, stats,
          // an attempt still running when the run stopped (failed, interrupted) is drawn to the end
          end: a.end ?? (typeof a.start === "number" ? Math.max(a.start, run.seconds || 0) : undefined),
          failure: a.failure || null, speculative: !!a.speculative, reused: !!a.reused || a.status === "reused",
          cold: stats.cold_start === true,
          peak: stats.max_memory_used_mb ?? stats.peak_memory_mb ?? null,
          seconds: stats.seconds ?? (a.end !== undefined && a.start !== undefined ? a.end - a.start : null),
        });
      }
    }
  }
  const committed = attempts.filter((a) => a.status === "committed" || a.reused);
  const cap = (run.executor && run.executor.sizing && run.executor.sizing.memory_mb)
    || attempts.map((a) => a.stats.memory_size_mb).find((m) => m) || null;

  /* --- header and summary ------------------------------------------------------------------- */
  set("job", run.job || "corral");
  const badge = document.getElementById("status");
  badge.textContent = run.status;
  badge.className = `badge ${run.status}`;
  set("where", `${run.backend} · run ${run.run_id} · started ${new Date(run.started * 1000).toLocaleString()} · ` +
               `output ${run.out}`);
  const sum = (list, key) => list.reduce((total, a) => total + (Number(a.stats[key]) || 0), 0);
  const retried = attempts.filter((a) => a.status === "failed").length;
  const finalTasks = committed.filter((a) => a.stage === stages.length - 1 &&  // the job's output
    (a.phase === "reduce" || !stages[stages.length - 1].reduce_tasks));
  const facts = [
    ["took", seconds(run.seconds)],
    ["tasks", number(new Set(attempts.map((a) => a.label)).size)],
    ["attempts", number(attempts.length)],
    ["failed attempts", number(retried)],
    ["speculative", number(attempts.filter((a) => a.speculative).length)],
    ["discarded", number(attempts.filter((a) => a.status === "discarded" || a.status === "cancelled").length)],
    ["reused (resumed)", number(attempts.filter((a) => a.reused).length)],
    ["cold starts", number(attempts.filter((a) => a.cold).length)],
    ["input", bytes(stages.length ? stages[0].input_bytes : 0)],
    ["records in", number(sum(committed.filter((a) => a.stage === 0 && a.phase === "map"), "records_in"))],
    ["records out", number(sum(finalTasks, "records_out"))],
    ["bytes out", bytes(sum(finalTasks, "bytes_out"))],
  ];
  document.getElementById("summary").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("span", {}, k), el("b", {}, v))));
  if (run.error) {
    const box = document.getElementById("error");
    box.hidden = false;
    box.textContent = run.error;
  }
  const advice = run.advice || [];
  document.getElementById("advice").replaceChildren(...(advice.length ? advice.map((a) => el("li", { class: a.level }, a.message))
    : [el("li", { class: "muted" }, "nothing to say about this run")]));

  /* --- timeline (Gantt): one row per task, or per slot when there are many tasks --------------- */
  const timed = attempts.filter((a) => typeof a.start === "number" && typeof a.end === "number");
  const byTask = timed.length <= 400;
  const rows = [];
  if (byTask) {
    for (const a of timed) { if (!rows.includes(a.label)) rows.push(a.label); a.row = a.label; }
  } else {  // pack attempts into slots: a slot holds attempts that do not overlap
    const ends = [];
    for (const a of timed.slice().sort((x, y) => x.start - y.start)) {
      let slot = ends.findIndex((end) => end <= a.start);
      if (slot < 0) { slot = ends.length; ends.push(0); }
      ends[slot] = a.end;
      a.row = `slot ${slot + 1}`;
    }
    for (let i = 0; i < Math.max(0, ...timed.map((a) => Number(a.row.slice(5)))); i++) rows.push(`slot ${i + 1}`);
  }
  const kinds = [
    ["map", "map", (a) => a.phase === "map" && a.status === "committed" && !a.speculative && !a.reused],
    ["reduce", "reduce", (a) => a.phase === "reduce" && a.status === "committed" && !a.speculative && !a.reused],
    ["speculative", "speculative attempt", (a) => a.speculative && a.status !== "failed"],
    ["failed", "failed (retried or fatal)", (a) => a.status === "failed"],
    ["discarded", "discarded or cancelled", (a) => (a.status === "discarded" || a.status === "cancelled") && !a.speculative],
    ["reused", "reused from an earlier run", (a) => a.reused],
    ["running", "never finished (the run stopped)", (a) => !["committed", "failed", "discarded", "cancelled"].includes(a.status) && !a.reused],
  ];
  const timelineSets = kinds.map(([color, label, test]) => ({
    label, backgroundColor: colors[color], borderColor: "#1d2126", borderSkipped: false,
    borderWidth: (ctx) => (ctx.raw && ctx.raw.cold ? 2 : 0),
    data: timed.filter(test).map((a) => ({ x: [a.start, Math.max(a.end, a.start + 0.002)], y: a.row, task: a.task,
      stage: a.stage, attempt: a.attempt, status: a.status, cold: a.cold, seconds: a.seconds, peak: a.peak })),
  })).filter((d) => d.data.length);
  document.getElementById("timeline-box").style.height = `${Math.min(2400, Math.max(180, rows.length * 18 + 70))}px`;
  const timeline = corral.chart("timeline", { type: "bar", data: { labels: rows, datasets: timelineSets }, options: {
    indexAxis: "y", grouped: false,
    datasets: { bar: { grouped: false, barPercentage: 0.9, categoryPercentage: 0.9 } },
    scales: { x: { type: "linear", min: Math.min(0, ...timed.map((a) => a.start)),
                   title: { display: true, text: timed.some((a) => a.start < 0)
                     ? "seconds since the start (reused attempts ran before it, in an earlier driver)"
                     : "seconds since the start" } },
              y: { ticks: { autoSkip: rows.length > 60, font: { size: 11 } } } },
    plugins: { tooltip: { callbacks: { label: (c) => {
      const p = c.raw;
      return `${p.task} attempt ${p.attempt}: ${p.status}, ${seconds(p.seconds)}` +
             (p.peak ? `, ${number(p.peak)} MB` : "") + (p.cold ? ", cold start" : "");
    } } } } } });
  const untimed = attempts.length - timed.length;
  set("timeline-note", (byTask ? "One row per task. " : `${number(timed.length)} attempts packed into slots (rows). `) +
    "Outlined bars are cold starts." + (untimed ? ` ${untimed} attempts have no start and end recorded.` : ""));

  /* --- memory, durations, bytes and records ------------------------------------------------- */
  const perTask = new Map();
  for (const a of attempts) {
    const seen = perTask.get(a.label) || { label: a.label, phase: a.phase, peak: null };
    if (a.peak !== null && (seen.peak === null || a.peak > seen.peak)) seen.peak = a.peak;
    perTask.set(a.label, seen);
  }
  corral.memoryChart("memory", [...perTask.values()], cap);
  set("memory-note", cap ? `the highest peak over each task's attempts, against the ${cap} MB the function had`
    : "local workers: the peak resident memory of the worker process each task ran in");

  const durations = committed.map((a) => a.seconds).filter((s) => typeof s === "number");
  corral.histogram("durations", durations, "tasks");

  const ioRows = committed.filter((a) => !a.reused);
  corral.chart("io", { data: { labels: ioRows.map((a) => a.label), datasets: [
    { type: "bar", label: "bytes read (MB)", data: ioRows.map((a) => (a.stats.bytes_in || 0) / (1 << 20)),
      backgroundColor: ioRows.map((a) => colors[a.phase] || colors.map) },
    { type: "line", label: "records (map) / keys (reduce) in", yAxisID: "y2", pointRadius: 2, borderWidth: 1,
      data: ioRows.map((a) => a.stats.records_in ?? a.stats.keys_in ?? null), borderColor: colors.retrying,
      backgroundColor: colors.retrying },
  ] }, options: { scales: { x: { ticks: { autoSkip: true, maxRotation: 0 } },
    y: { beginAtZero: true, title: { display: true, text: "MB" } },
    y2: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "records" } } } } });

  const spread = committed.filter((a) => typeof a.start === "number" && typeof a.end === "number" && !a.reused);
  const span = Math.max(1, ...spread.map((a) => a.end));
  const width = Math.max(0.5, span / 150);
  const buckets = Math.ceil(span / width) + 1;
  const records = new Array(buckets).fill(0), inBytes = new Array(buckets).fill(0);
  for (const a of spread) {
    const length = Math.max(a.end - a.start, 1e-6);
    for (let b = Math.floor(a.start / width); b * width < a.end && b < buckets; b++) {
      const overlap = Math.min(a.end, (b + 1) * width) - Math.max(a.start, b * width);
      if (overlap <= 0) continue;
      records[b] += (a.stats.records_in || 0) * overlap / length;
      inBytes[b] += (a.stats.bytes_in || 0) * overlap / length;
    }
  }
  corral.timeChart("throughput", [
    { label: "records in / s", points: records.map((r, b) => ({ x: b * width, y: r / width })), color: colors.map, stepped: true },
    { label: "MB read / s", points: inBytes.map((r, b) => ({ x: b * width, y: r / width / (1 << 20) })), color: colors.reduce,
      axis: "y2", axisTitle: "MB/s", stepped: true },
  ], "records/s");

  /* --- skew ---------------------------------------------------------------------------------- */
  const median = (values) => {
    const sorted = values.slice().sort((x, y) => x - y);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  };
  const phases = new Map();
  for (const a of committed) {
    const key = `${a.stage}:${a.phase}`;
    if (!phases.has(key)) phases.set(key, []);
    phases.get(key).push(a);
  }
  document.querySelector("#skew tbody").replaceChildren(...[...phases.entries()].map(([key, list]) => {
    const timedList = list.filter((a) => typeof a.seconds === "number");
    const slow = timedList.reduce((m, a) => (!m || a.seconds > m.seconds ? a : m), null);
    const big = list.reduce((m, a) => (!m || (a.stats.bytes_in || 0) > (m.stats.bytes_in || 0) ? a : m), null);
    const [stage, phase] = key.split(":");
    const medianSeconds = timedList.length ? median(timedList.map((a) => a.seconds)) : null;
    const medianBytes = median(list.map((a) => a.stats.bytes_in || 0));
    return el("tr", { class: slow && medianSeconds && slow.seconds > 3 * medianSeconds && slow.seconds >= 1 ? "error" : null },
      el("td", {}, manyStages ? `stage ${Number(stage) + 1} ${phase}` : phase),
      el("td", {}, slow ? slow.task : "–"), el("td", { class: "num" }, slow ? seconds(slow.seconds) : "–"),
      el("td", { class: "num" }, seconds(medianSeconds)),
      el("td", {}, big ? big.task : "–"), el("td", { class: "num" }, big ? bytes(big.stats.bytes_in || 0) : "–"),
      el("td", { class: "num" }, bytes(medianBytes)));
  }));

  /* --- counters, billing, failures ------------------------------------------------------------ */
  const counterRows = [];
  for (const [group, names] of Object.entries(run.counters || {})) {
    for (const [name, value] of Object.entries(names)) {
      counterRows.push(el("tr", { class: isError(group, name) ? "error" : null }, el("td", {}, group), el("td", {}, name),
        el("td", { class: "num", "data-counter": `${group}/${name}` }, number(value))));
    }
  }
  document.querySelector("#counters tbody").replaceChildren(...(counterRows.length ? counterRows
    : [el("tr", {}, el("td", { colspan: 3, class: "muted" }, "no counters"))]));

  const bill = run.report || {};
  document.getElementById("cost-box").hidden = bill.estimated_cost_usd === undefined;
  if (bill.estimated_cost_usd !== undefined) {
    document.getElementById("cost").replaceChildren(...[
      ["estimated cost", money(bill.estimated_cost_usd)], ["GB-seconds billed", number(bill.gb_seconds)],
      ["invocations", number(bill.invocations)], ["throttled invokes", number(bill.throttled_invokes || 0)],
      ["memory", bill.memory_mb ? `${bill.memory_mb} MB` : "–"],
    ].map(([k, v]) => el("div", {}, el("span", {}, k), el("b", {}, v))));
    set("cost-note", bill.summary || "");
  }

  const misses = attempts.filter((a) => a.status !== "committed" && !a.reused);
  document.querySelector("#failures tbody").replaceChildren(...(misses.length ? misses.map((a) => el("tr", {},
    el("td", {}, a.label), el("td", { class: "num" }, a.attempt), el("td", {}, a.status + (a.speculative ? " (speculative)" : "")),
    el("td", {}, a.failure ? a.failure.kind : ""),
    el("td", {}, a.failure ? a.failure.message : (a.status === "discarded" ? "another attempt committed first" : ""),
      a.failure && a.failure.traceback ? el("details", {}, el("summary", {}, "traceback"), el("pre", {}, a.failure.traceback)) : null)))
    : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "every attempt committed"))]));

  set("footer", `corral ${run.report_version || run.corral_version} report, written ${new Date(run.report_generated * 1000).toLocaleString()}` +
    ` from ${run.out}/_corral/manifest.json. Charts by Chart.js (MIT).`);
  window.corralReport = { run, attempts, timeline };
})();
