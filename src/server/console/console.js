// The sagalog console: one ES module, no build step, no dependency. It renders five views
// (overview, sagas, saga detail, participants, STUCK) from the HTTP/JSON API (docs/api.md),
// refreshes the lists every 2 s and follows an open saga live through its event stream. The
// token, if any, is kept in this browser's localStorage and sent as `Authorization: Bearer`.

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const STATUSES = ['PENDING', 'RUNNING', 'COMPLETED', 'COMPENSATING', 'COMPENSATED', 'STUCK'];
const REFRESH_MS = 2000;

let token = localStorage.getItem('sagalog.token') || '';
let timer = null;       // the current view's refresh timer
let stream = null;      // the current view's event stream (an AbortController)

// ---- helpers ------------------------------------------------------------------------------

function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

/** Calls the API; throws an Error carrying the gRPC code name and message. */
async function api(method, path, body) {
  const init = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!response.ok) {
    const e = json && json.error;
    const error = new Error(e ? `${e.status}: ${e.message}` : `HTTP ${response.status}: ${text}`);
    error.status = e ? e.status : String(response.status);
    throw error;
  }
  return json;
}

function badge(status) {
  return `<span class="status s-${esc(status)}">${esc(status)}</span>`;
}

function when(iso) {
  return iso ? esc(iso.replace('T', ' ').replace('Z', '')) : '<span class="muted">–</span>';
}

function took(fromMs, toMs) {
  if (!fromMs || !toMs) return '';
  const ms = toMs - fromMs;
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function showError(error) {
  const hint = error.status === 'UNAUTHENTICATED' || error.status === 'PERMISSION_DENIED'
    ? ' Enter a token with the needed role above.' : '';
  return `<p class="error" id="error">${esc(error.message)}${hint}</p>`;
}

function every(fn) {
  fn();
  timer = setInterval(fn, REFRESH_MS);
}

// ---- the banner: a poisoned journal or an open breaker ------------------------------------

async function checkBanner() {
  const problems = [];
  try {
    const ready = await (await fetch('/readyz')).json();
    if (ready.journal && ready.journal !== 'ok') problems.push(`Journal ${ready.journal}: the server exits and a restart recovers.`);
  } catch (e) { problems.push(`The server does not answer: ${e.message}`); }
  try {
    const { participants } = await api('GET', '/v1/admin/participants');
    for (const p of participants) {
      if (p.breaker_state !== 'closed') problems.push(`Circuit breaker of ${p.name} is ${p.breaker_state}.`);
    }
  } catch { /* needs an admin token; the overview says so */ }
  banner.hidden = problems.length === 0;
  banner.textContent = problems.join(' ');
}

// ---- views ---------------------------------------------------------------------------------

async function overview() {
  every(async () => {
    try {
      const hourAgo = Date.now() - 3600 * 1000;
      const [stats, recent] = await Promise.all([api('GET', '/v1/admin/stats'), finishedSince(hourAgo)]);
      const by = stats.sagas_by_status || {};
      const cards = STATUSES.map(s => `<div class="card" data-status="${s}"><div class="n">${by[s] || 0}</div><div class="l">${badge(s)}</div></div>`).join('');
      const done = recent.completed + recent.compensated;
      const rate = done ? (100 * recent.compensated / done).toFixed(1) : '0.0';
      main.innerHTML = `
        <h1>Overview</h1>
        <div class="cards" id="counts">${cards}</div>
        <h2>Last hour</h2>
        <div class="cards">
          <div class="card"><div class="n" id="throughput">${(done / 60).toFixed(2)}</div><div class="l">finished sagas / min</div></div>
          <div class="card"><div class="n" id="failure-rate">${rate}%</div><div class="l">compensated (of ${done} finished)</div></div>
        </div>
        <h2>Journal and recovery</h2>
        <table><tbody>
          <tr><th>journal size</th><td>${(stats.journal_bytes / 1048576).toFixed(1)} MiB</td></tr>
          <tr><th>acknowledged LSN</th><td class="mono">${stats.journal_lsn}</td></tr>
          <tr><th>recoveries</th><td>${stats.recoveries} (last took ${stats.last_recovery_ms} ms)</td></tr>
        </tbody></table>`;
    } catch (e) { main.innerHTML = `<h1>Overview</h1>${showError(e)}`; }
    checkBanner();
  });
}

/** Sagas finished since `ms` (at most 10 pages of 1000). */
async function finishedSince(ms) {
  const count = { completed: 0, compensated: 0 };
  let pageToken = '';
  for (let page = 0; page < 10; page++) {
    const q = new URLSearchParams({ status: 'COMPLETED,COMPENSATED', since: String(Math.floor(ms)), page_size: '1000' });
    if (pageToken) q.set('page_token', pageToken);
    const answer = await api('GET', `/v1/sagas?${q}`);
    for (const s of answer.sagas) {
      if (s.finished_at_ms < ms) continue;
      if (s.status === 'COMPLETED') count.completed++; else if (s.status === 'COMPENSATED') count.compensated++;
    }
    pageToken = answer.next_page_token;
    if (!pageToken) break;
  }
  return count;
}

async function sagas(params) {
  const status = params.get('status') || '';
  const prefix = params.get('prefix') || '';
  const since = params.get('since') || '';
  const pageToken = params.get('page_token') || '';
  const options = ['', ...STATUSES].map(s => `<option value="${s}" ${s === status ? 'selected' : ''}>${s || 'any status'}</option>`).join('');
  main.innerHTML = `
    <h1>Sagas</h1>
    <form class="filters" id="filters">
      <label>Status<br><select name="status">${options}</select></label>
      <label>Submitted since<br><input name="since" type="datetime-local" value="${esc(since)}"></label>
      <label>Id prefix<br><input name="prefix" value="${esc(prefix)}" placeholder="order-"></label>
      <button type="submit">Filter</button>
    </form>
    <div id="list"><p>Loading…</p></div>`;
  document.getElementById('filters').addEventListener('submit', event => {
    event.preventDefault();
    const form = new FormData(event.target);
    const q = new URLSearchParams();
    for (const [k, v] of form) if (v) q.set(k, v);
    location.hash = `#/sagas?${q}`;
  });
  every(async () => {
    const list = document.getElementById('list');
    if (!list) return;
    try {
      const q = new URLSearchParams({ page_size: '100' });
      if (status) q.set('status', status);
      if (since) q.set('since', String(new Date(since).getTime()));
      if (pageToken) q.set('page_token', pageToken);
      const answer = await api('GET', `/v1/sagas?${q}`);
      const rows = answer.sagas.filter(s => s.saga_id.startsWith(prefix)).map(s => {
        const applied = s.steps.filter(t => t.state === 'APPLIED').length;
        return `<tr data-id="${esc(s.saga_id)}">
          <td class="mono"><a href="#/saga/${encodeURIComponent(s.saga_id)}">${esc(s.saga_id)}</a></td>
          <td class="status-cell">${badge(s.status)}</td>
          <td>${applied}/${s.steps.length} applied</td>
          <td>${when(s.submitted_at)}</td><td>${took(s.submitted_at_ms, s.finished_at_ms)}</td></tr>`;
      }).join('');
      const next = answer.next_page_token
        ? `<a id="next-page" href="#/sagas?${new URLSearchParams({ status, prefix, since, page_token: answer.next_page_token })}">next page →</a>` : '';
      list.innerHTML = `<table id="sagas-table"><thead><tr><th>id</th><th>status</th><th>steps</th><th>submitted</th><th>took</th></tr></thead>
        <tbody>${rows || '<tr><td colspan="5" class="muted">no sagas</td></tr>'}</tbody></table>${next}`;
    } catch (e) { list.innerHTML = showError(e); }
  });
}

function stepRows(saga) {
  return saga.steps.map(s => {
    const outputs = Object.keys(s.outputs || {}).length ? `<span class="mono">${esc(JSON.stringify(s.outputs))}</span>` : '';
    const attempts = s.compensate_attempts ? `${s.attempts} + ${s.compensate_attempts} compensating` : `${s.attempts}`;
    return `<tr data-step="${s.index}">
      <td>${s.index}</td><td class="mono">${esc(s.action)}</td><td>${esc(s.participant || '')}</td>
      <td class="step-state">${badge(s.state)}${s.applied_by_marker ? ' <span class="muted">(by marker)</span>' : ''}${s.worker_id ? ` <span class="muted">(worker ${esc(s.worker_id)})</span>` : ''}</td>
      <td>${attempts}</td><td>${took(s.started_at_ms, s.finished_at_ms)}</td>
      <td class="error">${esc(s.last_error || '')}</td><td>${outputs}</td></tr>`;
  }).join('');
}

function renderSaga(saga) {
  const el = document.getElementById('saga');
  if (!el) return;
  const reason = saga.compensation_reason ? `<p>Compensating because: <span class="error">${esc(saga.compensation_reason)}</span></p>` : '';
  const parked = saga.parked_on ? `<p class="error">Parked: participant ${esc(saga.parked_on)} has an open breaker ${esc(saga.parked_reason || '')}</p>` : '';
  const live = ['COMPLETED', 'COMPENSATED', 'STUCK'].includes(saga.status) ? '' : ' <span class="muted">(live)</span>';
  el.innerHTML = `
    <p>Status <span id="saga-status">${badge(saga.status)}</span>${live} · version <span id="saga-version">${saga.version}</span>
       · submitted ${when(saga.submitted_at)} · finished ${when(saga.finished_at)} ${took(saga.submitted_at_ms, saga.finished_at_ms)}
       ${saga.recovery_count ? ` · recovered ${saga.recovery_count}×` : ''}</p>
    ${reason}${parked}
    <table id="steps"><thead><tr><th>#</th><th>action</th><th>participant</th><th>state</th><th>attempts</th><th>took</th><th>last error</th><th>outputs</th></tr></thead>
    <tbody>${stepRows(saga)}</tbody></table>
    ${['PENDING', 'RUNNING'].includes(saga.status) ? '<button id="cancel">Cancel saga</button>' : ''}
    ${saga.status === 'STUCK' ? resolveButtons(saga.saga_id) : ''}`;
  const cancel = document.getElementById('cancel');
  if (cancel) cancel.onclick = async () => {
    try { renderSaga(await api('POST', `/v1/sagas/${encodeURIComponent(saga.saga_id)}/cancel`)); } catch (e) { el.insertAdjacentHTML('beforeend', showError(e)); }
  };
  wireResolve(el, () => loadSaga(saga.saga_id));
}

async function loadSaga(id) {
  renderSaga(await api('GET', `/v1/sagas/${encodeURIComponent(id)}`));
}

/** Follows `/events` through fetch (EventSource cannot send a token), resuming after the last version. */
async function follow(id, controller) {
  let last = 0;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(`/v1/sagas/${encodeURIComponent(id)}/events`, {
        headers: headers(last ? { 'Last-Event-ID': String(last) } : {}), signal: controller.signal });
      if (!response.ok) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message', data = '', eventId = null;
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
            else if (line.startsWith('id:')) eventId = Number(line.slice(3).trim());
          }
          if (event === 'saga') { last = eventId; renderSaga(JSON.parse(data)); loadHistory(id); }
          if (event === 'end') return;
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    await new Promise(r => setTimeout(r, 1000));
  }
}

async function loadHistory(id) {
  const el = document.getElementById('history');
  if (!el) return;
  try {
    const { records } = await api('GET', `/v1/sagas/${encodeURIComponent(id)}/history`);
    el.innerHTML = `<table><thead><tr><th>LSN</th><th>record</th><th>payload</th></tr></thead><tbody>${
      records.map(r => `<tr><td class="mono">${r.lsn}</td><td>${esc(r.kind)}</td><td class="mono">${esc(JSON.stringify(r.payload ?? r.payload_error))}</td></tr>`).join('')}</tbody></table>`;
  } catch (e) { el.innerHTML = showError(e); }
}

async function sagaDetail(id) {
  main.innerHTML = `<h1>Saga <span class="mono">${esc(id)}</span></h1><div id="saga"><p>Loading…</p></div>
    <h2>Journal history</h2><div id="history"><p>Loading…</p></div>`;
  try { await loadSaga(id); } catch (e) { document.getElementById('saga').innerHTML = showError(e); return; }
  loadHistory(id);
  stream = new AbortController();
  follow(id, stream);
}

async function participants() {
  every(async () => {
    try {
      const [{ participants: list }, { queues }] = await Promise.all([api('GET', '/v1/admin/participants'), api('GET', '/v1/admin/queues')]);
      const rows = list.map(p => `<tr data-participant="${esc(p.name)}">
        <td>${esc(p.name)}</td><td>${esc(p.kind)}</td>
        <td>${p.healthy ? badge('reachable') : `${badge('unreachable')} <span class="error">${esc(p.probe_error)}</span>`}</td>
        <td class="breaker">${badge(p.breaker_state)}</td><td>${p.calls_succeeded}</td><td>${p.calls_failed}</td>
        <td><button class="reset" data-name="${esc(p.name)}" ${p.breaker_state === 'closed' ? 'disabled' : ''}>Reset breaker</button></td></tr>`).join('');
      const queueRows = queues.map(q => `<tr><td>${esc(q.queue)}</td><td>${esc(q.participant)}</td><td>${q.workers.length}</td>
        <td>${q.tasks_in_flight}</td><td>${q.tasks_waiting}</td><td>${badge(q.breaker_state)}</td></tr>`).join('');
      main.innerHTML = `<h1>Participants</h1>
        <table id="participants-table"><thead><tr><th>name</th><th>kind</th><th>health</th><th>breaker</th><th>succeeded</th><th>failed</th><th></th></tr></thead><tbody>${rows}</tbody></table>
        <h2>Worker queues</h2>${queues.length ? `<table><thead><tr><th>queue</th><th>participant</th><th>workers</th><th>in flight</th><th>waiting</th><th>breaker</th></tr></thead><tbody>${queueRows}</tbody></table>` : '<p class="muted">No worker queues.</p>'}`;
      for (const b of main.querySelectorAll('button.reset')) {
        b.onclick = async () => { await api('POST', `/v1/admin/participants/${encodeURIComponent(b.dataset.name)}/reset-breaker`); participants(); };
      }
    } catch (e) { main.innerHTML = `<h1>Participants</h1>${showError(e)}`; }
  });
}

function resolveButtons(id) {
  return `<span class="resolve">
    <button class="resolve-mark" data-id="${esc(id)}" title="The compensation was done by hand: record the saga as COMPENSATED">Mark compensated</button>
    <button class="resolve-retry" data-id="${esc(id)}" title="Run the failed compensation again">Retry compensation</button></span>`;
}

function wireResolve(root, after) {
  for (const b of root.querySelectorAll('button.resolve-mark, button.resolve-retry')) {
    b.onclick = async () => {
      const decision = b.classList.contains('resolve-mark') ? 'MARK_COMPENSATED' : 'RETRY_COMPENSATION';
      if (!confirm(`${decision} for saga ${b.dataset.id}?`)) return;
      try {
        let saga = await api('POST', `/v1/sagas/${encodeURIComponent(b.dataset.id)}/resolve`, { decision, operator: 'console' });
        const holder = b.parentElement;
        holder.innerHTML = `<span class="resolving">decision journaled, now ${badge(saga.status)}…</span>`;
        // Report the state the saga settles in, not the one right after the decision.
        for (let i = 0; i < 100 && !['COMPLETED', 'COMPENSATED', 'STUCK'].includes(saga.status); i++) {
          await new Promise(r => setTimeout(r, 200));
          saga = await api('GET', `/v1/sagas/${encodeURIComponent(b.dataset.id)}`);
        }
        holder.outerHTML = `<span class="resolved">resolved: now ${badge(saga.status)}</span>`;
      } catch (e) { b.parentElement.insertAdjacentHTML('beforeend', showError(e)); }
      after();
    };
  }
}

async function stuck() {
  every(async () => {
    try {
      const { sagas: list } = await api('GET', '/v1/sagas?status=STUCK&page_size=1000');
      const rows = list.map(s => {
        const failed = s.steps.filter(t => t.last_error).map(t => `step ${t.index} ${esc(t.action)}: ${esc(t.last_error)}`).join('<br>');
        return `<tr data-id="${esc(s.saga_id)}"><td class="mono"><a href="#/saga/${encodeURIComponent(s.saga_id)}">${esc(s.saga_id)}</a></td>
          <td class="error">${failed}</td><td>${resolveButtons(s.saga_id)}</td></tr>`;
      }).join('');
      if (main.querySelector('.resolved, .resolving')) return; // keep an answer on screen until the next view
      main.innerHTML = `<h1>STUCK sagas</h1>
        <p class="muted">A compensation failed for good. Fix the cause, then retry the compensation, or undo the effect by hand and mark the saga compensated.</p>
        <table id="stuck-table"><thead><tr><th>id</th><th>failure</th><th>decision</th></tr></thead><tbody>${rows || '<tr><td colspan="3" class="muted">none</td></tr>'}</tbody></table>`;
      wireResolve(main, () => {});
    } catch (e) { main.innerHTML = `<h1>STUCK sagas</h1>${showError(e)}`; }
  });
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  clearInterval(timer);
  timer = null;
  if (stream) { stream.abort(); stream = null; }
  const hash = location.hash.slice(1) || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const view = path.startsWith('/saga/') ? 'sagas' : (path.slice(1) || 'overview');
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.nav === view);
  if (path.startsWith('/saga/')) return sagaDetail(decodeURIComponent(path.slice(6)));
  if (path === '/sagas') return sagas(params);
  if (path === '/participants') return participants();
  if (path === '/stuck') return stuck();
  return overview();
}

document.getElementById('token').value = token;
document.getElementById('token-form').addEventListener('submit', event => {
  event.preventDefault();
  token = document.getElementById('token').value.trim();
  if (token) localStorage.setItem('sagalog.token', token); else localStorage.removeItem('sagalog.token');
  route();
});
window.addEventListener('hashchange', route);
route();
