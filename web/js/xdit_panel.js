// Enable Multi-GPU: a "Multi-GPU" sidebar tab with the helper group, its health, why a call ran on one GPU, and
// a plot of each rank's step times over the last sampling run. Reads GET /xdit/status (comfy_xdit_patch/monitor.py)
// once a second while shown. Frontends without the sidebar tab API get the same view as a floating panel.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TAB_ID = "xdit-status";
const POLL_MS = 1000;
const COLORS = ["#4e9af1", "#f18f4e", "#5cc46a", "#d65ce0", "#e0c84a", "#4ed4d4", "#e05c5c", "#a0a0ff"];

const escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const gib = (bytes) => (bytes == null ? "–" : (bytes / 2 ** 30).toFixed(1) + " GiB");
const memory = (rank) => (rank.memory_allocated == null ? "–" : `${gib(rank.memory_allocated)} (${gib(rank.memory_peak)})`);
const ms = (value) => (value == null ? "–" : value.toFixed(1) + " ms");
const color = (rank) => COLORS[rank % COLORS.length];

// The plot's top: the next 1, 2 or 5 times a power of ten at or above the slowest step.
function niceCeil(value) {
  const power = 10 ** Math.floor(Math.log10(value || 1));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= value);
}

function plot(ranks, caption) {
  const series = ranks.filter((r) => r.run_step_ms?.length);
  if (!series.length) return `<div class="xdit-note">No parallel step in the last run.</div>`;
  const [W, H, L, R, T, B] = [320, 170, 44, 10, 10, 26];
  const n = Math.max(...series.map((r) => r.run_step_ms.length));
  const top = niceCeil(Math.max(...series.flatMap((r) => r.run_step_ms)));
  const x = (i) => (L + (n > 1 ? i / (n - 1) : 0.5) * (W - L - R)).toFixed(1);
  const y = (v) => (T + (1 - v / top) * (H - T - B)).toFixed(1);
  const grid = [0, 0.5, 1].map((f) => `<line x1="${L}" x2="${W - R}" y1="${y(f * top)}" y2="${y(f * top)}" ` +
    `stroke="currentColor" stroke-opacity="0.2"/><text x="${L - 4}" y="${y(f * top)}" dy="3" text-anchor="end">` +
    `${+(f * top).toPrecision(3)}</text>`).join("");
  const lines = series.map((r) => {
    const points = r.run_step_ms.map((v, i) => `${x(i)},${y(v)}`);
    const dots = n <= 40 ? points.map((p) => { const [cx, cy] = p.split(","); return `<circle cx="${cx}" cy="${cy}" r="2"/>`; }).join("") : "";
    return `<g class="xdit-series" data-rank="${r.rank}" stroke="${color(r.rank)}" fill="${color(r.rank)}">` +
      `<polyline fill="none" stroke-width="1.5" points="${points.join(" ")}"/>${dots}</g>`;
  }).join("");
  const legend = series.map((r) => `<span style="color:${color(r.rank)}">■</span> rank ${r.rank}`).join(" &nbsp; ");
  return `<div class="xdit-caption">${escape(caption)}</div>` +
    `<svg class="xdit-plot" viewBox="0 0 ${W} ${H}" width="100%" font-size="10" fill="currentColor">${grid}` +
    `<text x="${L}" y="${H - 8}">1</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${n}</text>` +
    `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">step</text>` +
    `<text transform="translate(10 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">ms</text>${lines}</svg>` +
    `<div class="xdit-legend">${legend}</div>`;
}

function health(rank) {
  if (rank.alive) return `<span style="color:#5cc46a">ok</span>`;
  return `<span style="color:#f66">exited ${escape(rank.exit_code ?? "")}</span>`;
}

function view(status) {
  const parts = [];
  if (!status.running) {
    parts.push(`<div><b>No helper group running.</b> An Enable Multi-GPU node starts one at its first prompt.</div>`);
  } else {
    const group = status.group;
    parts.push(`<div class="xdit-layout"><b>${escape(group.layout)}</b></div>`);
    parts.push(`<div class="xdit-note">${escape(group.backend)}, started in ${group.started_s?.toFixed(1) ?? "–"} s, ` +
      `weights sent ${group.weight_syncs} time(s)</div>`);
    if (group.failure) parts.push(`<div style="color:#f66">failed: ${escape(group.failure)}</div>`);
    parts.push(`<table class="xdit-ranks"><tr><th>rank</th><th>device</th><th>pid</th><th>health</th>` +
      `<th>step</th><th>memory (peak)</th></tr>` + status.ranks.map((r) =>
        `<tr data-rank="${r.rank}"><td style="color:${color(r.rank)}">${r.rank}</td><td>${escape(r.device ?? "–")}</td>` +
        `<td>${r.pid ?? "–"}</td><td>${health(r)}</td><td>${ms(r.step_ms_median)}</td>` +
        `<td>${memory(r)}</td></tr>`).join("") + `</table>`);
    const sampling = status.last_run?.steps_from === "previous run";
    parts.push(plot(status.ranks, sampling ? "Step time per rank, previous run (sampling now)" : "Step time per rank, last run"));
  }
  const reasons = status.last_run?.one_gpu_reasons ?? [];
  for (const reason of reasons) parts.push(`<div class="xdit-one-gpu" style="color:#fa3">one GPU: ${escape(reason)}</div>`);
  return parts.join("");
}

const STYLE = `
#xdit-status { padding: 10px; font-size: 12px; line-height: 1.5; color: var(--fg-color, #ddd); }
#xdit-status h3 { margin: 0 0 6px; font-size: 14px; }
#xdit-status .xdit-note, #xdit-status .xdit-caption { opacity: 0.75; }
#xdit-status .xdit-caption { margin-top: 10px; }
#xdit-status table { border-collapse: collapse; margin-top: 6px; width: 100%; }
#xdit-status th, #xdit-status td { padding: 1px 6px 1px 0; text-align: left; white-space: nowrap; }
#xdit-status th { font-weight: normal; opacity: 0.7; }
#xdit-status .xdit-legend { margin-top: 2px; }
`;

// Fills ``root`` now and once a second; returns the function that stops it.
function mount(root) {
  if (!document.getElementById("xdit-status-style")) {
    const style = document.createElement("style");
    style.id = "xdit-status-style";
    style.textContent = STYLE;
    document.head.appendChild(style);
  }
  root.innerHTML = `<div id="xdit-status"><h3>Multi-GPU</h3><div class="xdit-body">…</div></div>`;
  const body = root.querySelector(".xdit-body");
  let busy = false;
  const poll = async () => {
    if (busy) return;   // a slow answer must not pile up requests
    busy = true;
    try {
      const response = await api.fetchApi("/xdit/status");
      body.innerHTML = view(await response.json());
    } catch (error) {
      body.textContent = "Status unavailable.";
    } finally {
      busy = false;
    }
  };
  poll();
  const timer = setInterval(poll, POLL_MS);
  return () => clearInterval(timer);
}

function floatingPanel() {
  const panel = document.createElement("div");
  panel.id = "xdit-status-panel";
  Object.assign(panel.style, {
    position: "fixed", left: "60px", bottom: "12px", zIndex: 1000, width: "360px",
    background: "rgba(20,20,20,0.9)", borderRadius: "6px",
  });
  document.body.appendChild(panel);
  mount(panel);
}

app.registerExtension({
  name: "comfy_xdit_patch.StatusTab",
  async setup() {
    const manager = app.extensionManager;
    if (typeof manager?.registerSidebarTab !== "function") {
      floatingPanel();
      return;
    }
    let stop = null;
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-server",
      title: "Multi-GPU",
      tooltip: "Enable Multi-GPU: helper group, health and step times",
      type: "custom",
      render: (el) => {
        stop?.();
        stop = mount(el);
      },
      destroy: () => {
        stop?.();
        stop = null;
      },
    });
  },
});
