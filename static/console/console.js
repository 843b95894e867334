/* Small behaviours of the console: a confirmation step before destructive POSTs.
 *
 * A <form data-confirm="question"> opens the confirmation dialog (#confirm-dialog in
 * base.html) instead of submitting; its "confirm" button submits the form. Without
 * JavaScript the form simply submits.
 */
(function () {
  "use strict";
  var dialogEl = document.getElementById("confirm-dialog");
  if (!dialogEl || typeof bootstrap === "undefined") {
    return;
  }
  var dialog = new bootstrap.Modal(dialogEl);
  var pending = null;
  var pendingSubmitter = null;

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.confirmed === "yes") {
        return;
      }
      event.preventDefault();
      pending = form;
      // The button that was clicked names the action (e.g. the users list's "op"): submit with it.
      pendingSubmitter = event.submitter || null;
      dialogEl.querySelector(".modal-body p").textContent = form.dataset.confirm;
      var button = dialogEl.querySelector("[data-confirm-ok]");
      button.textContent = form.dataset.confirmLabel || "Confirm";
      dialog.show();
    });
  });

  dialogEl.querySelector("[data-confirm-ok]").addEventListener("click", function () {
    if (pending) {
      pending.dataset.confirmed = "yes";
      dialog.hide();
      if (pending.requestSubmit) {
        pending.requestSubmit(pendingSubmitter);
      } else {
        pending.submit();
      }
    }
  });

  // The users list: a checkbox in the heading selects every user on the page.
  var selectAll = document.getElementById("select-all");
  if (selectAll) {
    selectAll.addEventListener("change", function () {
      document.querySelectorAll("input[name=user_ids]").forEach(function (box) {
        box.checked = selectAll.checked;
      });
    });
  }

  // Copy buttons (the new API key).
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.getElementById(button.dataset.copy);
      if (target && navigator.clipboard) {
        navigator.clipboard.writeText(target.textContent.trim()).then(function () {
          button.textContent = "Copied";
        });
      }
    });
  });
})();
