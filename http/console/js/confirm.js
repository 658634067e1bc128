// The confirmation dialog (#confirm) every write goes through: it shows the exact call
// that OK will make, so an operator sees what is sent before it is sent.

import { $, fill } from './dom.js';

// Opens #confirm and resolves true on OK, false on Cancel or Escape.
//   title:    the dialog's heading
//   okLabel:  the OK button's text
//   fields:   nodes put above the call (inputs the call depends on), or none
//   describe: () => ({call, ok}); the call's text, and whether OK is allowed now.
//             Asked again on every input in the dialog, so the call text is live.
export function confirmCall({ title, okLabel = 'Confirm', fields = [], describe }) {
  const dialog = $('#confirm');
  const form = $('#confirm-form');
  const ok = $('#confirm-ok');
  const cancelButton = $('#confirm-cancel');
  $('#confirm-title').textContent = title;
  ok.textContent = okLabel;
  fill($('#confirm-fields'), ...fields);

  const refresh = () => {
    const { call, ok: allowed = true } = describe();
    $('#confirm-call').textContent = call;
    ok.disabled = !allowed;
  };
  refresh();

  return new Promise((resolve) => {
    let settled = false;
    // Settles at once on OK, not at the dialog's 'close' event (a task later), so the
    // caller marks the page as loading within the click itself.
    const settle = (confirmed) => {
      if (settled) return;
      settled = true;
      form.removeEventListener('submit', submit);
      form.removeEventListener('input', refresh);
      form.removeEventListener('change', refresh);
      cancelButton.removeEventListener('click', cancel);
      dialog.removeEventListener('close', closed);
      if (dialog.open) dialog.close();
      resolve(confirmed);
    };
    const submit = (event) => {
      event.preventDefault();
      if (!ok.disabled) settle(true);
    };
    const cancel = () => settle(false);
    const closed = () => settle(false); // Escape
    form.addEventListener('submit', submit);
    form.addEventListener('input', refresh);
    form.addEventListener('change', refresh);
    cancelButton.addEventListener('click', cancel);
    dialog.addEventListener('close', closed);
    dialog.showModal();
    // Focus the first field to fill in; with none, Cancel (the safe answer to Enter).
    const first = form.querySelector('#confirm-fields input, #confirm-fields select, #confirm-fields textarea');
    (first || cancelButton).focus();
  });
}
