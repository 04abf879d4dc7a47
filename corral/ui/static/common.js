/* What the live page and the report share: formatting, and the charts (Chart.js, vendored). */
"use strict";

const corral = (() => {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const colors = {
    map: css("--map"), reduce: css("--reduce"), committed: css("--committed"), failed: css("--failed"),
    discarded: css("--discarded"), cancelled: css("--cancelled"), running: css("--running"),
    retrying: css("--retrying"), reused: css("--reused"), speculative: css("--speculative"),
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function set(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text;
  }

  function number(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: Math.abs(n) < 10 ? 2 : 0 });
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${Math.round(n)} bytes` : `${n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
    if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    return m < 120 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function money(usd) {
    if (usd === null || usd === undefined) return "–";
    if (usd >= 1) return `$${usd.toFixed(2)}`;
    const decimals = usd <= 0 ? 6 : Math.max(6, 2 - Math.floor(Math.log10(usd)));
    return `$${usd.toFixed(decimals)}`;
  }

  const isError = (group, name) => /error|fail|bad|invalid|exception|reject|malformed/i.test(`${group} ${name}`);

  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.font.size = 12;
  Chart.defaults.color = css("--muted");
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  /* A chart on <canvas id=ID>, made once and updated in place afterwards. */
  const made = {};
  function chart(id, config) {
    const existing = made[id];
    if (existing) {
      existing.data = config.data;
      if (config.options) existing.options = config.options;
      existing.update("none");
      return existing;
    }
    made[id] = new Chart(document.getElementById(id), config);
    return made[id];
  }

  /* Peak memory of each attempt against the memory cap (a line at the cap, when there is one). */
  function memoryChart(id, rows, cap) {
    const labels = rows.map((r) => r.label);
    const datasets = [{
      type: "bar", label: "peak memory (MB)", data: rows.map((r) => r.peak),
      backgroundColor: rows.map((r) => colors[r.phase] || colors.map),
    }];
    if (cap) datasets.push({ type: "line", label: `memory cap (${cap} MB)`, data: rows.map(() => cap),
                            borderColor: colors.failed, borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5 });
    return chart(id, { data: { labels, datasets }, options: {
      scales: { x: { ticks: { autoSkip: true, maxRotation: 0 } }, y: { beginAtZero: true, title: { display: true, text: "MB" } } },
      plugins: { legend: { display: true } } } });
  }

  /* A histogram of values (seconds), in about 20 bins. */
  function histogram(id, values, label) {
    if (!values.length) return null;
    const max = Math.max(...values), min = Math.min(...values);
    const bins = Math.min(20, Math.max(1, values.length));
    const width = (max - min) / bins || 1;
    const counts = new Array(bins).fill(0);
    for (const v of values) counts[Math.min(bins - 1, Math.floor((v - min) / width))]++;
    const labels = counts.map((_, i) => seconds(min + (i + 0.5) * width));
    return chart(id, { type: "bar", data: { labels, datasets: [{ label, data: counts, backgroundColor: colors.map }] },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "tasks" } } },
                 plugins: { legend: { display: false } } } });
  }

  /* A line chart over time (seconds since the job started). */
  function timeChart(id, series, yTitle) {
    return chart(id, { type: "line", data: { datasets: series.map((s) => ({
        label: s.label, data: s.points, borderColor: s.color, backgroundColor: s.color, pointRadius: 0,
        borderWidth: 2, tension: 0, yAxisID: s.axis || "y", stepped: s.stepped || false })) },
      options: { parsing: false, scales: {
        x: { type: "linear", title: { display: true, text: "seconds since the start" }, min: 0 },
        y: { beginAtZero: true, title: { display: !!yTitle, text: yTitle || "" } },
        ...(series.some((s) => s.axis === "y2") ? { y2: { beginAtZero: true, position: "right",
            grid: { drawOnChartArea: false }, title: { display: true, text: series.find((s) => s.axis === "y2").axisTitle } } } : {}),
      } } });
  }

  return { el, set, number, bytes, seconds, money, isError, chart, memoryChart, histogram, timeChart, colors };
})();
