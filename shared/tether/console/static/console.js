// Live parts of a page: an element with data-live re-reads that fragment every
// data-every ms until the fragment marks itself finished (data-terminal). With
// data-merge, items (data-<merge> ids) are added and removed one by one, so a form
// someone is filling in is never replaced under them.
"use strict";
(function () {
  function parse(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html;
    return holder.content;
  }

  function merge(el, fresh, attr) {
    const key = "data-" + attr;
    const have = new Map([...el.querySelectorAll("[" + key + "]")].map((n) => [n.getAttribute(key), n]));
    const now = new Map([...fresh.querySelectorAll("[" + key + "]")].map((n) => [n.getAttribute(key), n]));
    for (const [id, node] of have) {
      if (!now.has(id) && !node.contains(document.activeElement)) node.remove();
    }
    for (const [id, node] of now) {
      if (!have.has(id)) el.appendChild(node);
    }
    const empty = el.querySelector(".empty");
    if (now.size > 0 && empty) empty.remove();
    if (now.size === 0 && !empty && el.querySelectorAll("[" + key + "]").length === 0) {
      const note = fresh.querySelector(".empty");
      if (note) el.appendChild(note);
    }
  }

  function replace(el, html) {
    const open = [...el.querySelectorAll("details[open][id]")].map((d) => d.id);
    el.innerHTML = html;
    for (const id of open) {
      const d = document.getElementById(id);
      if (d) d.open = true;
    }
  }

  function follow(el) {
    const every = Number(el.dataset.every || 1500);
    let last = null;
    async function tick() {
      if (el.querySelector("[data-terminal]")) return;
      try {
        const response = await fetch(el.dataset.live, { credentials: "same-origin" });
        if (response.ok) {
          const html = await response.text();
          if (html !== last) {
            last = html;
            if (el.dataset.merge) merge(el, parse(html), el.dataset.merge);
            else replace(el, html);
          }
        }
      } catch (err) {
        // The next tick tries again: a restarting console is no reason to stop following.
      }
      setTimeout(tick, every);
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-live]").forEach(follow);
  });
})();
