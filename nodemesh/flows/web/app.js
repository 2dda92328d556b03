// nodemesh service map: a hand-written renderer, no dependencies.
// The server pushes the whole graph over SSE (/api/events) whenever it changed;
// a click on an edge fetches that edge's recent flows (/api/edge).
"use strict";
const SVG = "http://www.w3.org/2000/svg";
let selected = null;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// Sources on the left, everything else on the right, in name order.
function layout(graph, width, height) {
  const targets = new Set(graph.edges.map(e => e.destination));
  const left = graph.nodes.filter(n => !targets.has(n.id)).map(n => n.id);
  const right = graph.nodes.filter(n => targets.has(n.id)).map(n => n.id);
  const pos = {};
  const place = (names, x) => names.forEach((name, i) => {
    pos[name] = { x, y: (height * (i + 1)) / (names.length + 1) };
  });
  place(left, width * 0.2);
  place(right, width * 0.75);
  return pos;
}

function label(edge) {
  const status = Object.entries(edge.status).map(([k, v]) => `${k}:${v}`).join(" ");
  const verdicts = Object.entries(edge.verdicts).map(([k, v]) => `${k}:${v}`).join(" ");
  return `${edge.requests} req, ${edge.rate}/s | ${status} | ${verdicts}`;
}

function render(graph) {
  const svg = document.getElementById("map");
  const { width, height } = svg.getBoundingClientRect();
  const pos = layout(graph, width || 800, height || 500);
  const edges = document.getElementById("edges");
  const nodes = document.getElementById("nodes");
  edges.replaceChildren();
  nodes.replaceChildren();
  for (const edge of graph.edges) {
    const a = pos[edge.source], b = pos[edge.destination];
    const key = `${edge.source}|${edge.destination}`;
    const g = el("g", {
      class: "edge" + (edge.denied ? " denied" : "") + (key === selected ? " selected" : ""),
      "data-source": edge.source, "data-destination": edge.destination,
      "data-requests": edge.requests, "data-denied": edge.denied,
    }, edges);
    el("line", { x1: a.x + 90, y1: a.y, x2: b.x - 90, y2: b.y }, g);
    const t = el("text", { x: (a.x + b.x) / 2 - 120, y: (a.y + b.y) / 2 - 6 }, g);
    t.textContent = label(edge);
    g.addEventListener("click", () => showEdge(edge.source, edge.destination));
  }
  for (const node of graph.nodes) {
    const p = pos[node.id];
    const g = el("g", { class: "node", "data-id": node.id }, nodes);
    el("rect", { x: p.x - 90, y: p.y - 16, width: 180, height: 32 }, g);
    const t = el("text", { x: p.x - 82, y: p.y + 5 }, g);
    t.textContent = node.id;
  }
  document.getElementById("status").textContent =
    `${graph.nodes.length} workloads, ${graph.edges.length} edges, update ${graph.generation}`;
}

async function showEdge(source, destination) {
  selected = `${source}|${destination}`;
  const q = new URLSearchParams({ source, destination });
  const flows = await (await fetch(`api/edge?${q}`)).json();
  document.getElementById("edge-title").textContent = `${source} → ${destination}`;
  const body = document.querySelector("#flows tbody");
  body.replaceChildren();
  for (const f of flows) {
    const tr = document.createElement("tr");
    tr.className = f.verdict;
    for (const k of ["time", "source", "destination", "verdict", "summary"]) {
      const td = document.createElement("td");
      td.textContent = f[k];
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

const events = new EventSource("api/events");
events.onmessage = (message) => render(JSON.parse(message.data));
events.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
