// A tiny DOM, just enough for the render modules to run under node: elements with
// attributes, classes, dataset, style, children and text, and querySelector for simple
// selectors (`tag`, `.class`, `#id`, `[attr]`, `[attr="value"]`, compounds of them, and
// the descendant combinator), fragments and insertBefore.
// There is no HTML parser, on purpose: text set on an element stays text.

function kebab(name) {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

export class FakeText {
  constructor(text) {
    this.data = String(text);
    this.parentNode = null;
  }

  get textContent() {
    return this.data;
  }
}

export class FakeElement {
  constructor(tagName, ownerDocument) {
    this.tagName = tagName.toUpperCase();
    this.ownerDocument = ownerDocument;
    this.parentNode = null;
    /** @type {(FakeElement|FakeText)[]} */
    this.childNodes = [];
    this.attributes = new Map();
    this.style = { width: "" };
    this.listeners = new Map();
    this.dataset = new Proxy({}, {
      get: (_, key) => this.getAttribute(`data-${kebab(String(key))}`) ?? undefined,
      set: (_, key, value) => { this.setAttribute(`data-${kebab(String(key))}`, value); return true; },
      deleteProperty: (_, key) => { this.removeAttribute(`data-${kebab(String(key))}`); return true; },
      has: (_, key) => this.hasAttribute(`data-${kebab(String(key))}`),
    });
  }

  // --- attributes ---
  setAttribute(name, value) { this.attributes.set(name, String(value)); }
  getAttribute(name) { return this.attributes.has(name) ? this.attributes.get(name) : null; }
  hasAttribute(name) { return this.attributes.has(name); }
  removeAttribute(name) { this.attributes.delete(name); }
  toggleAttribute(name, force) {
    const on = force === undefined ? !this.hasAttribute(name) : Boolean(force);
    if (on) this.setAttribute(name, "");
    else this.removeAttribute(name);
    return on;
  }

  get className() { return this.getAttribute("class") ?? ""; }
  set className(value) { this.setAttribute("class", value); }
  get classList() {
    const names = () => this.className.split(/\s+/).filter(Boolean);
    return {
      contains: (name) => names().includes(name),
      add: (name) => { if (!names().includes(name)) this.className = [...names(), name].join(" "); },
      remove: (name) => { this.className = names().filter((n) => n !== name).join(" "); },
    };
  }
  get id() { return this.getAttribute("id") ?? ""; }
  set id(value) { this.setAttribute("id", value); }
  get hidden() { return this.hasAttribute("hidden"); }
  set hidden(value) { this.toggleAttribute("hidden", Boolean(value)); }

  // --- children ---
  #adopt(nodes) {
    // A fragment hands over its children, as the DOM's does.
    nodes = nodes.flatMap((node) => (node instanceof FakeFragment ? node.childNodes.splice(0) : [node]));
    return nodes.map((node) => {
      const child = typeof node === "string" ? new FakeText(node) : node;
      child.parentNode?.childNodes.splice(child.parentNode.childNodes.indexOf(child), 1);
      child.parentNode = this;
      return child;
    });
  }
  append(...nodes) { this.childNodes.push(...this.#adopt(nodes)); }
  insertBefore(node, before) {
    const adopted = this.#adopt([node]);
    const at = before ? this.childNodes.indexOf(before) : -1;
    this.childNodes.splice(at < 0 ? this.childNodes.length : at, 0, ...adopted);
    return node;
  }
  after(node) {
    const parent = this.parentNode;
    const next = parent.childNodes[parent.childNodes.indexOf(this) + 1] ?? null;
    parent.insertBefore(node, next);
  }
  scrollIntoView(options) { this.scrolledIntoView = options ?? true; }
  prepend(...nodes) { this.childNodes.unshift(...this.#adopt(nodes)); }
  replaceChildren(...nodes) {
    for (const child of this.childNodes) child.parentNode = null;
    this.childNodes = [];
    this.append(...nodes);
  }
  remove() { this.parentNode?.childNodes.splice(this.parentNode.childNodes.indexOf(this), 1); this.parentNode = null; }
  get children() { return this.childNodes.filter((node) => node instanceof FakeElement); }
  get firstElementChild() { return this.children[0] ?? null; }
  get lastElementChild() { return this.children.at(-1) ?? null; }
  get childElementCount() { return this.children.length; }

  get textContent() { return this.childNodes.map((node) => node.textContent).join(""); }
  set textContent(value) { this.replaceChildren(...(value === "" || value === null ? [] : [new FakeText(value)])); }

  // --- events ---
  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }
  removeEventListener(type, listener) {
    this.listeners.set(type, (this.listeners.get(type) ?? []).filter((l) => l !== listener));
  }
  click() { for (const listener of this.listeners.get("click") ?? []) listener({ type: "click", target: this }); }

  // --- queries ---
  /** One compound selector (no combinator) against this element. @param {string} compound */
  #matchesCompound(compound) {
    const parts = compound.match(/^([a-z0-9]+)?((?:[.#][\w-]+|\[[\w-]+(?:=(?:"[^"]*"|[\w-]+))?\])*)$/i);
    if (!parts) throw new Error(`fake-dom: unsupported selector ${compound}`);
    const [, tag, rest] = parts;
    if (tag && tag.toUpperCase() !== this.tagName) return false;
    for (const [, mark, name, attribute, quoted, bare] of rest.matchAll(/([.#])([\w-]+)|\[([\w-]+)(?:=(?:"([^"]*)"|([\w-]+)))?\]/g)) {
      const value = quoted ?? bare;
      if (mark === "." && !this.classList.contains(name)) return false;
      if (mark === "#" && this.id !== name) return false;
      if (attribute && (!this.hasAttribute(attribute) || (value !== undefined && this.getAttribute(attribute) !== value))) return false;
    }
    return true;
  }
  /** Compound selectors joined by the descendant combinator (a space). @param {string} selector */
  matches(selector) {
    const compounds = selector.trim().split(/\s+/);
    if (!this.#matchesCompound(compounds.pop())) return false;
    let ancestor = this.parentNode;
    for (const compound of compounds.reverse()) {
      while (ancestor instanceof FakeElement && !ancestor.#matchesCompound(compound)) ancestor = ancestor.parentNode;
      if (!(ancestor instanceof FakeElement)) return false;
      ancestor = ancestor.parentNode;
    }
    return true;
  }
  querySelectorAll(selector) {
    const found = [];
    const walk = (node) => {
      for (const child of node.children) {
        if (child.matches(selector)) found.push(child);
        walk(child);
      }
    };
    walk(this);
    return found;
  }
  querySelector(selector) { return this.querySelectorAll(selector)[0] ?? null; }
}

export class FakeFragment extends FakeElement {
  constructor(ownerDocument) { super("#document-fragment", ownerDocument); }
}

export class FakeDocument {
  constructor() {
    this.body = new FakeElement("body", this);
    this.title = "jobstream";
  }
  createElement(tag) { return new FakeElement(tag, this); }
  createDocumentFragment() { return new FakeFragment(this); }
  getElementById(id) { return this.body.querySelector(`#${id}`); }
  querySelector(selector) { return this.body.querySelector(selector); }
  querySelectorAll(selector) { return this.body.querySelectorAll(selector); }
}

/** Installs a fresh fake document as the global `document`; returns it. */
export function installFakeDocument() {
  const doc = new FakeDocument();
  globalThis.document = /** @type {*} */ (doc);
  return doc;
}
