// Calls to the sagalog HTTP API (http/openapi.yaml), and the admin token they need.
//
// Reads under /api/v1/ go out without a token and never ask for one. Calls under
// /internal/ (and registering a definition) carry `Authorization: Bearer TOKEN`; the
// token lives in sessionStorage only (never a cookie, never in a URL), so it is gone
// when the tab closes. A 401 asks for the token in #token-dialog and makes the call again.

import { $ } from './dom.js';

const TOKEN_KEY = 'sagalog.adminToken';

// An answer other than 2xx, with the server's {"error": {"code", "message"}}.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || null;
  } catch {
    return null; // storage disabled: the token is asked for on every 401
  }
}

function setToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Without storage the token cannot be kept; the call is still made with it.
  }
}

export function forgetToken() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Nothing was kept.
  }
}

async function send(method, path, { body, signal, token } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', `The server could not be reached (${method} ${path}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const err = data && data.error;
    throw new ApiError(response.status, (err && err.code) || `http_${response.status}`,
      (err && err.message) || `${method} ${path} answered ${response.status} ${response.statusText}`.trim());
  }
  if (data === null && text) {
    throw new ApiError(response.status, 'invalid_json', `${method} ${path} answered something that is not JSON.`);
  }
  return data;
}

// A read: GET without a token.
export function get(path, { signal } = {}) {
  return send('GET', path, { signal });
}

// Whether the server has an admin token, as /api/v1/stats says; null until known.
let tokenRequired = null;

export function noteTokenRequired(required) {
  tokenRequired = Boolean(required);
}

async function serverWantsToken(signal) {
  if (tokenRequired === null) {
    try {
      noteTokenRequired((await get('/api/v1/stats', { signal })).admin_token_required);
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      return false; // unknown: make the call, and a 401 asks
    }
  }
  return tokenRequired;
}

// A call that needs the admin token. Asks for it first when none is kept and the
// server needs one, and again on each 401 until the call passes or the dialog is
// cancelled (then the 401 is thrown).
export async function authed(method, path, { body, signal } = {}) {
  if (!getToken() && await serverWantsToken(signal)) {
    if (!await askToken('This call needs the admin token.')) {
      throw new ApiError(401, 'unauthorized', 'This needs the admin token, and none was given.');
    }
  }
  for (;;) {
    try {
      return await send(method, path, { body, signal, token: getToken() });
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      forgetToken();
      if (signal && signal.aborted) throw err;
      if (!await askToken(err.message)) throw err;
    }
  }
}

// The token dialog. One question at a time: calls that need the token while it is
// open wait for the same answer.
let asking = null;

function askToken(note) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const dialog = $('#token-dialog');
    const form = $('#token-form');
    const input = $('#token-input');
    $('#token-note').textContent = note;
    input.value = '';
    input.setCustomValidity('');
    input.oninput = () => input.setCustomValidity('');
    const cancelButton = $('#token-cancel');
    // Settles on OK or Cancel at once, and on Escape at the dialog's 'close' event.
    const settle = (token) => {
      form.removeEventListener('submit', submit);
      cancelButton.removeEventListener('click', cancel);
      dialog.removeEventListener('close', closed);
      if (dialog.open) dialog.close();
      asking = null;
      resolve(token);
    };
    const submit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      // Sent in a header: printable ASCII without spaces, as admin tokens are made.
      if (!/^[\x21-\x7e]+$/.test(token)) {
        input.setCustomValidity('An admin token is printable ASCII, without spaces.');
        input.reportValidity();
        return;
      }
      setToken(token);
      settle(token);
    };
    const cancel = () => settle(null);
    const closed = () => settle(null);
    form.addEventListener('submit', submit);
    cancelButton.addEventListener('click', cancel);
    dialog.addEventListener('close', closed);
    dialog.showModal();
    input.focus();
  });
  return asking;
}
