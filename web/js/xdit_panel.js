// Enable Multi-GPU: a small live panel with the helper group, its health and per-rank step times.
// Reads GET /xdit/status (comfy_xdit_patch/monitor.py) once a second.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const gib = (bytes) => (bytes == null ? "–" : (bytes / 2 ** 30).toFixed(1) + " GiB");
const ms = (value) => (value == null ? "–" : value.toFixed(1) + " ms");

function render(panel, status) {
  const lines = [];
  if (!status.running) {
    lines.push("<b>Multi-GPU</b>: no helper group running");
  } else {
    const group = status.group;
    lines.push(`<b>Multi-GPU</b>: ${group.layout}`);
    if (group.failure) lines.push(`<span style="color:#f66">failed: ${group.failure}</span>`);
    lines.push("<table><tr><th>rank</th><th>device</th><th>health</th><th>step</th><th>memory (peak)</th></tr>" +
      status.ranks.map((r) => `<tr><td>${r.rank}</td><td>${r.device ?? "–"}</td>` +
        `<td>${r.alive ? "ok" : "exited " + (r.exit_code ?? "")}</td><td>${ms(r.step_ms_median)}</td>` +
        `<td>${gib(r.memory_allocated)} (${gib(r.memory_peak)})</td></tr>`).join("") + "</table>");
  }
  for (const reason of status.last_run?.one_gpu_reasons ?? []) {
    lines.push(`<span style="color:#fa3">one GPU: ${reason}</span>`);
  }
  panel.innerHTML = lines.join("<br>");
}

app.registerExtension({
  name: "comfy_xdit_patch.StatusPanel",
  async setup() {
    const panel = document.createElement("div");
    panel.id = "xdit-status-panel";
    Object.assign(panel.style, {
      position: "fixed", left: "140px", bottom: "12px", zIndex: 1000, padding: "6px 10px",
      background: "rgba(20,20,20,0.85)", color: "#ddd", font: "12px monospace", borderRadius: "6px",
      maxWidth: "480px", pointerEvents: "none",
    });
    panel.textContent = "Multi-GPU: …";
    document.body.appendChild(panel);
    const poll = async () => {
      try {
        const response = await api.fetchApi("/xdit/status");
        render(panel, await response.json());
      } catch (error) {
        panel.textContent = "Multi-GPU: status unavailable";
      }
    };
    await poll();
    setInterval(poll, 1000);
  },
});
