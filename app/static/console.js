// The console's little JavaScript: the CSRF header on fetch() calls, confirm() on risky buttons.
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  window.consoleFetch = function (url, options) {
    options = options || {};
    options.headers = Object.assign({ "X-CSRF-Token": meta ? meta.content : "" }, options.headers || {});
    options.credentials = "same-origin";
    return fetch(url, options);
  };
  document.addEventListener("click", function (ev) {
    const el = ev.target.closest("[data-confirm]");
    if (el && !window.confirm(el.dataset.confirm)) ev.preventDefault();
  });
  // "select all" boxes: <input type=checkbox data-select-all="name">
  document.addEventListener("change", function (ev) {
    const name = ev.target.dataset && ev.target.dataset.selectAll;
    if (!name) return;
    document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (box) {
      box.checked = ev.target.checked;
    });
  });
})();
