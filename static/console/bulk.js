/* The users list's bulk bar: the confirmation names what will change.
 *
 * console.js asks before a <form data-confirm> is sent; here the clicked button writes that
 * question from its data-confirm-keep / data-confirm-period templates: how many users, the
 * amount, and the reset period only when one was chosen (the default keeps each user's own).
 */
(function () {
  "use strict";
  var form = document.getElementById("bulk-form");
  if (!form) {
    return;
  }
  form.querySelectorAll("button[name=op]").forEach(function (button) {
    // A click (or Enter in the amount, which clicks the first button) comes before the submit event.
    button.addEventListener("click", function () {
      var count = document.querySelectorAll("input[name=user_ids][form=bulk-form]:checked").length;
      var amount = form.querySelector("[name=total_budget]").value.trim();
      var select = form.querySelector("[name=duration]");
      var option = select.options[select.selectedIndex];
      var template = (select.value === "keep" || !button.dataset.confirmPeriod)
        ? button.dataset.confirmKeep : button.dataset.confirmPeriod;
      form.dataset.confirm = template
        .replace("{count}", count + " selected user" + (count === 1 ? "" : "s"))
        .replace("{amount}", amount ? "$" + amount : "(no amount)")
        .replace("{period}", option ? option.textContent.trim().toLowerCase() : "")
        + " Each change is written to the audit log.";
    });
  });
})();
