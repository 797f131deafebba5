// tokenledger admin UI: small enhancements; every page works without them.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Filters and pickers apply on change.
  for (const control of document.querySelectorAll("[data-autosubmit]")) {
    control.addEventListener("change", () => control.form && control.form.requestSubmit());
  }

  // Destructive forms ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  // Copy a secret shown once.
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.dataset.copy);
      if (!source || !navigator.clipboard) return;
      await navigator.clipboard.writeText(source.textContent.trim());
      button.classList.add("is-done");
    });
  }

  // "Unlimited" is its own choice: the amount field is off while it is ticked.
  for (const box of document.querySelectorAll("[data-unlimited]")) {
    const input = document.querySelector(box.dataset.unlimited);
    if (!input) continue;
    const sync = () => { input.disabled = box.checked; };
    box.addEventListener("change", () => { sync(); updateContract(); });
    sync();
  }

  // The contract value a license implies, as the fields change.
  const output = document.querySelector("[data-contract-value]");
  const credits = document.querySelector('[data-contract="credits"]');
  const price = document.querySelector('[data-contract="price"]');
  function updateContract() {
    if (!output || !credits || !price) return;
    const c = Number(credits.value), p = Number(price.value);
    if (credits.disabled || !(c > 0) || !(p > 0)) { output.textContent = "–"; return; }
    const format = new Intl.NumberFormat(output.dataset.locale || "en", { style: "currency", currency: "USD" });
    output.textContent = format.format(c * p);
  }
  for (const input of [credits, price]) {
    if (input) input.addEventListener("input", updateContract);
  }
});
