// FaceSmith's editor extension (served by ComfyUI from the pack's WEB_DIRECTORY; plain JS, no build step).
//
// 1. Text results on the node: a FaceSmith node that returns {"ui": {"text": [...]}} (Judge Faces' report, Save
//    Concept's paths, Train Domain Encoder's summary, ...) shows that text in a read-only box on the node itself.
// 2. A live loss chart on training nodes: the server sends the "facesmith.loss" event (nodes/comfy_bridge.py,
//    LOSS_EVENT) with {node, label, total, points: [[step, loss], ...], reset}; the chart is drawn on that node.
// Neither is saved with the workflow or sent with a prompt (serialize: false).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const LOSS_EVENT = "facesmith.loss";
const TEXT_WIDGET = "facesmith_result";
const CHART_WIDGET = "facesmith_loss_chart";
const CHART_HEIGHT = 120;
const MAX_POINTS = 4000; // older points are thinned (every other one) beyond this

function isFaceSmith(nodeData) {
  return String(nodeData?.name ?? "").startsWith("FaceSmith");
}

function fitHeight(node) {
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas(true, true);
}

function showText(node, lines) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, TEXT_WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false;
    widget.options = { ...(widget.options ?? {}), serialize: false };
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.85;
    }
  }
  widget.value = lines.join("\n");
  if (widget.inputEl) widget.inputEl.value = widget.value;
  fitHeight(node);
}

function drawChart(ctx, widget, width, y) {
  const pad = 8, h = CHART_HEIGHT - 2 * pad, w = width - 2 * pad, x0 = pad, y0 = y + pad;
  ctx.save();
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(x0, y0, w, h);
  const pts = widget.points;
  ctx.fillStyle = "#bbb";
  ctx.font = "11px sans-serif";
  if (!pts.length) {
    ctx.fillText("loss: waiting for the first step", x0 + 6, y0 + 16, w - 12);
    ctx.restore();
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of pts) {
    if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (hi <= lo) hi = lo + 1e-9;
  const last = pts[pts.length - 1];
  const total = Math.max(widget.total || last[0], last[0], 1);
  ctx.strokeStyle = "#4fc3f7";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach(([s, v], i) => {
    const px = x0 + (w * s) / total, py = y0 + h - 4 - ((h - 20) * (v - lo)) / (hi - lo);
    if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
  });
  ctx.stroke();
  ctx.fillText(`${widget.label || "loss"}  step ${last[0]}/${total}  loss ${Number(last[1]).toPrecision(4)}` +
               `  (min ${lo.toPrecision(3)}, max ${hi.toPrecision(3)})`, x0 + 6, y0 + 13, w - 12);  // fit the node
  ctx.restore();
}

function chartWidget(node) {
  let widget = node.widgets?.find((w) => w.name === CHART_WIDGET);
  if (widget) return widget;
  widget = {
    name: CHART_WIDGET,
    type: "facesmith_chart",
    value: "",
    points: [],
    total: 0,
    label: "",
    serialize: false,
    options: { serialize: false },
    computeSize(width) { return [width, CHART_HEIGHT]; },
    draw(ctx, _node, width, y) { drawChart(ctx, this, width, y); },
  };
  node.addCustomWidget(widget);
  fitHeight(node);
  return widget;
}

function onLoss({ detail }) {
  if (!detail || detail.node == null) return;
  const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
  if (!node) return;
  const widget = chartWidget(node);
  if (detail.reset) widget.points = [];
  widget.points.push(...(detail.points ?? []));
  while (widget.points.length > MAX_POINTS) widget.points = widget.points.filter((_, i) => i % 2 === 0);
  widget.total = detail.total ?? widget.total;
  widget.label = detail.label ?? widget.label;
  node.setDirtyCanvas(true, false);
}

app.registerExtension({
  name: "FaceSmith.results",
  setup() {
    api.addEventListener(LOSS_EVENT, onLoss);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isFaceSmith(nodeData)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text != null) showText(this, [].concat(text).map(String));
    };
  },
});
