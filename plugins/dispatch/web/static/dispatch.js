// The one enhancement: "Select all" ticks every row's checkbox. Everything works without it.
document.addEventListener("change", function (event) {
  var all = event.target.closest("[data-select-all]");
  if (!all) return;
  all.form.querySelectorAll('input[type="checkbox"][name="selected"]').forEach(function (box) {
    box.checked = all.checked;
  });
});
// "More actions" opens its menu by keyboard and mouse (a <details> element does the rest).
document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape") return;
  document.querySelectorAll("details.menu[open]").forEach(function (menu) {
    menu.removeAttribute("open");
    menu.querySelector("summary").focus();
  });
});
