// Small DOM and formatting helpers shared by the panels. Text always goes in through
// textContent, never as HTML, so nothing a gateway, file name or chat message carries can
// inject markup.

export const $ = (id) => document.getElementById(id);

/** el("td", {class: "num", text: "3"}, child...) */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** A progress bar with its percentage: returns {node, set(percent)}. */
export function progressBar(kind = "") {
  const fill = el("i");
  const label = el("span", { text: "0%" });
  const node = el("div", { class: "progress" }, el("div", { class: "bar " + kind }, fill), label);
  return {
    node,
    set(percent) {
      const value = Math.max(0, Math.min(100, Number.isFinite(percent) ? percent : 0));
      fill.style.width = value + "%";
      label.textContent = Math.floor(value) + "%";
      node.dataset.value = String(Math.floor(value));
    },
  };
}

export function setTag(node, state) {
  node.textContent = state ?? "—";
  node.dataset.state = state ?? "";
}

export function bytes(count) {
  if (!count || count <= 0) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = count, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (value >= 100 || unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
}

export function clock(date = new Date()) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Keeps a list at most `max` children long, dropping the oldest (first) ones. */
export function trim(list, max) {
  while (list.children.length > max) list.firstElementChild.remove();
}
