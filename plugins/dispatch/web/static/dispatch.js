// The one enhancement: "Select all" ticks every row's checkbox. Everything works without it.
document.addEventListener("change", function (event) {
  var all = event.target.closest("[data-select-all]");
  if (!all) return;
  all.form.querySelectorAll('input[type="checkbox"][name="selected"]').forEach(function (box) {
    box.checked = all.checked;
  });
});
// The "More actions" menu button: toggles its menu, moves focus into it, Escape closes it.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-menu]");
  document.querySelectorAll("[data-menu][aria-expanded='true']").forEach(function (open) {
    if (open !== button) toggle(open, false);
  });
  if (button) toggle(button, button.getAttribute("aria-expanded") !== "true");
});
function toggle(button, open) {
  var menu = document.getElementById(button.getAttribute("aria-controls"));
  button.setAttribute("aria-expanded", open ? "true" : "false");
  menu.hidden = !open;
  if (open) { var item = menu.querySelector("[role=menuitem]"); if (item) item.focus(); }
}
document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape") return;
  document.querySelectorAll("[data-menu][aria-expanded='true']").forEach(function (button) {
    toggle(button, false);
    button.focus();
  });
});
