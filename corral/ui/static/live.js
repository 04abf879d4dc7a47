/* The live page: the state the server pushes (server-sent events from /api/events), drawn as it comes. */
"use strict";

(() => {
  const { el, set, number, bytes, seconds, money, isError, colors } = corral;
  let last = null;

  function render(state) {
    last = state;
    document.title = `corral: ${state.job || "run"} (${state.status})`;
    set("job", state.job || "corral");
    const badge = document.getElementById("status");
    badge.textContent = state.status;
    badge.className = `badge ${state.status}`;
    set("where", `${state.backend || ""} · run ${state.run_id || ""} · output ${state.out || ""}`);
    set("elapsed", seconds(state.elapsed));
    set("phase", state.phase ? `stage ${state.stage + 1} of ${state.stages}, ${state.phase}` : "planning");

    const tasks = state.tasks || { pending: 0, running: 0, retrying: 0, committed: 0, failed: 0, total: 0 };
    const bar = document.getElementById("taskbar");
    bar.replaceChildren(...["committed", "running", "retrying", "failed"].map((kind) =>
      el("span", { class: kind, style: `width:${tasks.total ? (100 * tasks[kind]) / tasks.total : 0}%`,
                   title: `${kind}: ${tasks[kind]}` })));
    for (const kind of ["committed", "running", "retrying", "failed", "pending", "total"]) set(`tasks-${kind}`, number(tasks[kind]));
    document.querySelector("#phases tbody").replaceChildren(...state.phases.map((p) => el("tr", {},
      el("td", {}, p.stage + 1), el("td", {}, p.phase), el("td", { class: "num" }, number(p.tasks)),
      el("td", { class: "num" }, number(p.committed)), el("td", { class: "num" }, number(p.running)),
      el("td", { class: "num" }, number(p.failed)), el("td", { class: "num" }, p.seconds === null ? "…" : seconds(p.seconds)))));

    const rows = [];
    for (const [group, names] of Object.entries(state.counters)) {
      for (const [name, value] of Object.entries(names)) {
        const rate = (state.counter_rates[group] || {})[name];
        rows.push(el("tr", { class: isError(group, name) ? "error" : null },
          el("td", {}, group), el("td", {}, name),
          el("td", { class: "num", "data-counter": `${group}/${name}` }, number(value)),
          el("td", { class: "num", "data-rate": `${group}/${name}` }, rate === undefined ? "–" : number(rate))));
      }
    }
    document.querySelector("#counters tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no counters yet"))]));
    const over = state.status === "succeeded" || state.status === "failed";
    set("counters-note", over ? "The run's totals; rates are averages over the run."
      : state.live_counters ? "Counters move while tasks run (reported every second); rates over the last 10 s."
      : "This backend reports a task's counters when the task ends, not while it runs.");

    set("records-in", number(state.records_in));
    set("keys-in", number(state.keys_in));
    set("records-out", number(state.records_out));
    set("bytes-in", bytes(state.bytes_in));
    set("bytes-out", bytes(state.bytes_out));
    document.getElementById("cpu-box").hidden = !state.cpu;
    if (state.cpu) set("cpu", `${(state.cpu.busy_cores || 0).toFixed(2)} of ${state.cpu.cores} cores ` +
                              `(${Math.round(100 * state.cpu.utilisation)}%)`);
    document.getElementById("cost-box").hidden = !state.cost;
    if (state.cost) {
      set("cost", money(state.cost.usd));
      set("cost-note", `${number(state.cost.invocations)} invocations, ${number(state.cost.gb_seconds)} GB-s billed at ` +
                       `${state.cost.platform} ${state.cost.prices}`);
    }

    const history = state.history;
    const rate = (key, scale) => history.slice(1).map((h, i) => ({
      x: h.t, y: (h[key] - history[i][key]) / Math.max(0.001, h.t - history[i].t) / scale }));
    corral.timeChart("throughput", [
      { label: "records in / s", points: rate("records_in", 1), color: colors.map, stepped: "after" },
      { label: "MB in / s", points: rate("bytes_in", 1 << 20), color: colors.reduce, axis: "y2", axisTitle: "MB/s",
        stepped: "after" },
    ], "records/s");
    document.getElementById("workers-box").hidden = !state.cpu && !state.cost;
    if (state.cpu) {
      set("workers-title", "Worker CPU");
      corral.timeChart("workers", [{ label: "busy cores (last 5 s)", points: history.map((h) => ({ x: h.t, y: h.busy_cores })),
                                     color: colors.retrying }], `cores (of ${state.cpu.cores})`);
      set("workers-note", `CPU time of the running tasks over ${state.cpu.cores} cores`);
    } else if (state.cost) {
      set("workers-title", "Cost so far");
      corral.timeChart("workers", [{ label: "USD", points: history.map((h) => ({ x: h.t, y: h.cost_usd })),
                                     color: colors.committed, stepped: true }], "USD");
      set("workers-note", "billed duration of the tasks that ended, at list prices");
    }

    const done = state.attempts.filter((a) => a.seconds !== null && a.seconds !== undefined);
    const cap = state.memory_cap_mb;
    const datasets = [["committed", colors.committed], ["failed", colors.failed], ["discarded", colors.discarded]]
      .map(([status, color]) => ({ label: status, backgroundColor: color, borderColor: color,
        data: done.filter((a) => a.status === status).map((a) => ({ x: a.seconds, y: a.peak_memory_mb, task: a.task })) }))
      .filter((d) => d.data.length);
    if (cap) {
      const xmax = Math.max(1, ...done.map((a) => a.seconds));
      datasets.push({ type: "line", label: `memory cap (${cap} MB)`, data: [{ x: 0, y: cap }, { x: xmax, y: cap }],
                      borderColor: colors.failed, borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5 });
    }
    corral.chart("tasks-chart", { type: "scatter", data: { datasets }, options: {
      scales: { x: { beginAtZero: true, title: { display: true, text: "duration (s)" } },
                y: { beginAtZero: true, title: { display: true, text: "peak memory (MB)" } } },
      plugins: { tooltip: { callbacks: { label: (c) => `${c.raw.task || ""} ${seconds(c.raw.x)}, ${number(c.raw.y)} MB` } } } } });
    set("cap-note", cap ? `the function's memory: ${cap} MB` : "local workers: peak memory of each worker process");

    set("retries", number(state.retries));
    set("throttles", number(state.throttles));
    const throttled = (state.throttled || []).map((t) => ({ ...t, kind: "throttled",
      message: `${number(t.throttles)} throttled invoke${t.throttles === 1 ? "" : "s"} retried` +
               (t.message ? `: ${t.message}` : "") }));
    document.querySelector("#failures tbody").replaceChildren(...[...state.failures, ...throttled]
      .sort((a, b) => b.at - a.at).map((f) => el("tr", { class: f.kind === "throttled" ? "throttled" : null },
        el("td", {}, seconds(f.at)), el("td", {}, `${f.task} #${f.attempt}`), el("td", {}, f.kind),
        el("td", {}, f.message, f.will_retry ? el("span", { class: "muted" }, " (retrying)") : null))));

    document.getElementById("advice-box").hidden = !state.advice.length;
    document.getElementById("advice").replaceChildren(...state.advice.map((a) =>
      el("li", { class: a.level }, a.message)));
    set("footer", over ? `The job ${state.status}${state.error ? ": " + state.error.split("\n")[0] : ""}. ` +
                         "This is its final state." : `updated ${new Date().toLocaleTimeString()}`);
  }

  /* Pushed updates; where the stream breaks (the run ended, the server went away) the last state stays. */
  const stream = new EventSource("/api/events");
  stream.addEventListener("state", (message) => render(JSON.parse(message.data)));
  stream.onerror = () => {
    if (last && (last.status === "succeeded" || last.status === "failed")) {
      stream.close();
      set("footer", `${document.getElementById("footer").textContent} The server has stopped.`);
    }
  };
  window.corralLive = { state: () => last };
})();
