// Runs web/facesmith.js against stand-ins of the three frontend modules it imports (the shims ComfyUI's frontend
// serves under /scripts/), then drives it the way the frontend does; prints one JSON line of what it saw.
// Usage: node harness.mjs <dir holding scripts/ and extensions/facesmith/facesmith.js>
const dir = process.argv[2];
const { state } = await import(`${dir}/scripts/app.js`);
await import(`${dir}/extensions/facesmith/facesmith.js`);
const ext = state.extensions[0];

class Node {
  constructor(id) { this.id = id; this.widgets = []; this.size = [200, 80]; this.dirty = 0; }
  addCustomWidget(w) { this.widgets.push(w); return w; }
  computeSize() { return [200, 80 + this.widgets.length * 100]; }
  setSize(s) { this.size = s; }
  setDirtyCanvas() { this.dirty += 1; }
}
function nodeType() { const t = function () {}; t.prototype = Object.create(Node.prototype); return t; }

const judgeType = nodeType(), otherType = nodeType();
await ext.beforeRegisterNodeDef(judgeType, { name: "FaceSmithJudgeFaces" });
await ext.beforeRegisterNodeDef(otherType, { name: "KSampler" });
ext.setup();
const judge = new Node(3); Object.setPrototypeOf(judge, judgeType.prototype);
const other = new Node(4); Object.setPrototypeOf(other, otherType.prototype);
judge.onExecuted({ text: ["image 0: ok\nmean 0.9"] });
judge.onExecuted({ text: ["second run"] });
const trainer = new Node(7);
state.graph.nodes[3] = judge; state.graph.nodes[7] = trainer;
const fire = (detail) => state.listeners["facesmith.loss"].forEach((f) => f({ detail }));
fire({ node: "7", label: "train", total: 10, points: [[1, 2.0], [2, 1.5]], reset: true });
fire({ node: "7", label: "train", total: 10, points: [[3, 1.0]], reset: false });
fire({ node: "99", total: 10, points: [[1, 1]], reset: true }); // a node not in the graph: ignored
const calls = [];
const ctx = new Proxy({}, { get: (t, k) => (k in t ? t[k] : (...a) => calls.push([k, a])), set: (t, k, v) => { t[k] = v; return true; } });
const chart = trainer.widgets.find((w) => w.name === "facesmith_loss_chart");
chart.draw(ctx, trainer, 200, 0);
fire({ node: "7", label: "train", total: 10, points: [[1, 5.0]], reset: true });
const text = judge.widgets.find((w) => w.name === "facesmith_result");
console.log(JSON.stringify({
  text: text.value, textWidgets: judge.widgets.length, readOnly: text.inputEl.readOnly,
  serialize: [text.serialize, text.options.serialize, chart.serialize, chart.options.serialize],
  otherWrapped: typeof other.onExecuted, chartHeight: chart.computeSize(200)[1],
  pointsBeforeReset: 3, pointsAfterReset: chart.points, total: chart.total,
  drew: calls.map((c) => c[0]), labels: calls.filter((c) => c[0] === "fillText").map((c) => c[1][0]),
}));
