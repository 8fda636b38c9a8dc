// managed by registry-kit (registry_kit/webui_static): the registry web page.
//
// Everything shown comes from the registry's own HTTP API (/v2/), asked with the logged-in
// user's credentials: the page lists exactly what the registry answers to that user, so
// per-repository access control in the registry composes without changes here. With token
// auth the repository list is the token server's (config.catalog: what the user may pull).
// The credentials live in this closure only (no localStorage, no cookie); reloading the
// page logs out. All text goes into the page through textContent, never as HTML.
"use strict";

(() => {
  // Catalog and tag-list page size (n=), at most the registry's catalog.maxentries
  // (default 1000); the Link header gives the rest. "?n=50" on the page's URL sets it lower
  // (the browser test uses that to follow Link through several pages).
  const PAGE = Math.min(1000, Math.max(1,
    Number(new URLSearchParams(location.search).get("n")) || 1000));
  const PARALLEL = 6; // manifest requests at once (a browser's per-host connection limit)
  const MANIFEST_TYPES = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
  ].join(", ");
  const INDEX_TYPES = new Set([MANIFEST_TYPES.split(", ")[0], MANIFEST_TYPES.split(", ")[1]]);

  let credentials = null; // {user, basic}: memory only
  let session = false; // a login succeeded and no logout since: the header shows "Log out"
  // Bearer tokens by scope (token auth), memory only: {token, renewAt}. A token is renewed
  // before it expires (the token server's expires_in, on this browser's clock) and when
  // the registry refuses it anyway (401: expired by the registry's clock, or revoked).
  let tokens = new Map();
  // The challenge the registry gave per method and repository (or path), so that later
  // requests there carry their token at once: one request instead of three (Basic, the
  // 401, the token). Scopes only, no secret.
  let challenged = new Map();
  let tokenService = null; // the registry's token service name, from its first challenge
  let config = {registry: "", deleteEnabled: false};
  let repositories = [];
  let current = null; // {name, tags: [{tag, digest, ...}]}
  // Image configs by repository and digest: tags often share one, and with htpasswd each
  // request costs the registry a bcrypt check.
  let configs = new Map();

  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // --- the registry API ---

  // A challenge from the registry (the web server moves WWW-Authenticate to
  // X-Registry-Authenticate so that the browser never opens its own login dialog).
  function challenge(response) {
    const text = response.headers.get("X-Registry-Authenticate") ||
      response.headers.get("WWW-Authenticate") || "";
    const scheme = text.split(" ", 1)[0].toLowerCase();
    const params = {};
    for (const match of text.matchAll(/(\w+)="([^"]*)"/g)) params[match[1]] = match[2];
    return {scheme, params};
  }

  // Token auth (auth.token): fetch a token for the challenged scope with the user's
  // credentials, kept in memory per scope. The registry's realm names the token server's
  // own port, another origin the Content-Security-Policy does not allow: the page asks the
  // same token server through this origin (config.token, served by the page's haproxy).
  // Resolves to the token, or to the token server's refusal (a Response: 401 = wrong
  // password).
  const tokenKey = (params) => `${params.service || ""} ${params.scope || ""}`;

  // What a challenge is remembered under: the method and the repository a path names
  // (its manifests, blobs and tags share one scope), else the path itself.
  function challengeKey(method, path) {
    const match = path.match(/^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//);
    return `${method} ${match ? match[1] : path.split("?")[0]}`;
  }

  async function bearerToken(params, {renew = false} = {}) {
    const key = tokenKey(params);
    const cached = tokens.get(key);
    if (cached && !renew && Date.now() < cached.renewAt) return cached.token;
    const url = new URL(config.token || params.realm, location.href);
    if (url.origin !== location.origin) {
      throw new HttpError(401, `the token service ${url.origin} is not on this page's origin`);
    }
    if (params.service) {
      tokenService = params.service;
      url.searchParams.set("service", params.service);
    }
    if (params.scope) url.searchParams.set("scope", params.scope);
    const ask = () => fetch(url, {
      headers: {Authorization: `Basic ${credentials.basic}`},
      credentials: "omit", cache: "no-store"});
    let response;
    try {
      response = await ask();
    } catch (_) {
      response = await ask(); // a dropped connection, as in api(): asked once more
    }
    if (!response.ok) return response;
    const body = await response.json();
    const token = body.token || body.access_token;
    // The spec's default lifetime is 60 s; renew a tenth early (at most 30 s).
    const seconds = Number(body.expires_in) > 0 ? Number(body.expires_in) : 60;
    tokens.set(key, {token, renewAt: Date.now() + 1000 * (seconds - Math.min(30, seconds / 10))});
    if (cached) deleteRightsChanged(); // a renewed token may grant other rights
    return token;
  }

  // Whether this user may delete in a repository. With token auth, what a token for the
  // repository's delete scope grants (its access claim, read, not verified: the registry
  // verifies and decides; this only hides a button that would be refused).
  async function mayDelete(name) {
    if (!config.deleteEnabled) return false;
    if (!config.token || !tokenService) return true; // htpasswd: every user may
    const token = await bearerToken({service: tokenService, scope: `repository:${name}:delete`});
    return grantsDelete(token, name);
  }

  function grantsDelete(token, name) {
    if (typeof token !== "string") return false;
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part));
      return (claims.access || []).some((entry) => entry.type === "repository" &&
        entry.name === name && (entry.actions || []).includes("delete"));
    } catch (_) {
      return false;
    }
  }

  // A token was renewed: the open repository's delete buttons follow the rights of the
  // current token, not of the one the page had when it was opened.
  let rightsCheck = null;
  let checkAgain = false; // a token was renewed while a check ran: check once more after
  function deleteRightsChanged() {
    if (!current) return;
    if (rightsCheck) {
      checkAgain = true;
      return;
    }
    const opened = current;
    rightsCheck = (async () => {
      try {
        const allowed = await mayDelete(opened.name);
        if (current === opened && allowed !== opened.mayDelete) {
          opened.mayDelete = allowed;
          $("gc-note").hidden = !allowed;
          for (const cell of $("tag-rows").querySelectorAll("td.actions")) {
            cell.replaceChildren(...deleteButtons(cell.parentElement.dataset.tag));
          }
        }
      } finally {
        rightsCheck = null;
        if (checkAgain) {
          checkAgain = false;
          deleteRightsChanged();
        }
      }
    })();
  }

  async function api(path, {method = "GET", accept = null} = {}) {
    const headers = {};
    if (accept) headers.Accept = accept;
    // Basic first: with htpasswd that is the whole story; with token auth the registry
    // answers 401 with a Bearer challenge, and the request is repeated with a token.
    const known = challenged.get(challengeKey(method, path));
    const cached = known && tokens.get(tokenKey(known));
    if (cached && Date.now() < cached.renewAt) {
      // Token auth seen here before: its token first; a 401 goes the long way below.
      try {
        const answer = await fetch(path, {method, credentials: "omit", cache: "no-store",
          redirect: "follow", headers: {...headers, Authorization: `Bearer ${cached.token}`}});
        if (answer.status !== 401) return answer;
      } catch (error) {
        if (method !== "GET") throw error; // a read is asked again below
      }
    }
    headers.Authorization = `Basic ${credentials.basic}`;
    const ask = () => fetch(path, {
      method, headers, credentials: "omit", cache: "no-store", redirect: "follow"});
    let response;
    try {
      response = await ask();
    } catch (error) {
      // A connection dropped under load ("Failed to fetch"): a read is asked once more.
      if (method !== "GET") throw error;
      response = await ask();
    }
    if (response.status === 401) {
      const {scheme, params} = challenge(response);
      if (scheme === "bearer" && params.realm) {
        challenged.set(challengeKey(method, path), params);
        const withToken = (token) => fetch(path, {method, credentials: "omit",
          cache: "no-store", headers: {...headers, Authorization: `Bearer ${token}`}});
        let token = await bearerToken(params);
        if (typeof token !== "string") return token; // the token server's refusal
        const answer = await withToken(token);
        if (answer.status !== 401 || challenge(answer).params.error === "insufficient_scope") {
          return answer; // served, or refused for want of rights: a new token changes nothing
        }
        // The registry refused the token itself (invalid_token: expired by its clock, or
        // no longer valid): a new one, asked once with the credentials in memory, and the
        // request once more.
        token = await bearerToken(params, {renew: true});
        if (typeof token !== "string") return token;
        return withToken(token);
      }
    }
    return response;
  }

  // The URL in a Link header's rel="next" (the registry's pagination), or null.
  function nextLink(response) {
    const link = response.headers.get("Link");
    const match = link && link.match(/<([^>]+)>\s*;\s*rel="?next"?/);
    if (!match) return null;
    const url = new URL(match[1], location.href);
    return url.origin === location.origin ? url.pathname + url.search : null;
  }

  async function jsonOrThrow(response, what) {
    if (!response.ok) {
      let detail = "";
      try {
        const body = await response.json();
        detail = body.errors && body.errors[0] ? `: ${body.errors[0].message}` : "";
      } catch (_) { /* not JSON */ }
      throw new HttpError(response.status, `${what}: the registry answered ` +
        `${response.status}${detail}`);
    }
    return response.json();
  }

  // Every page of a paginated list (catalog, tags), following Link rel="next".
  async function allPages(path, field, what) {
    const items = [];
    let next = path;
    while (next) {
      const response = await api(next);
      const body = await jsonOrThrow(response, what);
      items.push(...(body[field] || []));
      next = nextLink(response);
    }
    return items;
  }

  const repoPath = (name) => name.split("/").map(encodeURIComponent).join("/");

  async function manifest(name, reference) {
    const response = await api(`/v2/${repoPath(name)}/manifests/${encodeURIComponent(reference)}`,
      {accept: MANIFEST_TYPES});
    const body = await jsonOrThrow(response, `manifest ${name}:${reference}`);
    const type = body.mediaType || (response.headers.get("Content-Type") || "").split(";")[0];
    return {body, type, digest: response.headers.get("Docker-Content-Digest") || ""};
  }

  function imageConfig(name, digest) {
    const key = `${name}@${digest}`;
    if (!configs.has(key)) {
      configs.set(key, (async () => {
        try {
          const response = await api(`/v2/${repoPath(name)}/blobs/${digest}`);
          return response.ok ? await response.json() : null;
        } catch (_) {
          return null; // e.g. a redirect to object storage, which this page may not fetch
        }
      })());
    }
    return configs.get(key);
  }

  const layerBytes = (body) => (body.layers || []).reduce((sum, layer) => sum + layer.size, 0);
  const platformName = (p) => [p.os, p.architecture, p.variant].filter(Boolean).join("/");

  // Digest, size, created time and platforms of one tag; an index (manifest list) shows
  // each platform, its size is the sum of its images' layers.
  async function describeTag(name, tag) {
    const top = await manifest(name, tag);
    const info = {tag, digest: top.digest, type: top.type, size: 0, created: "", platforms: []};
    if (INDEX_TYPES.has(top.type) || Array.isArray(top.body.manifests)) {
      const children = (top.body.manifests || []).filter((m) => !m.platform ||
        m.platform.os !== "unknown");
      info.platforms = children.map((m) => m.platform ? platformName(m.platform) : "?");
      const images = await Promise.all(children.map((m) => manifest(name, m.digest)));
      info.size = images.reduce((sum, image) => sum + layerBytes(image.body), 0);
      const first = images.find((image) => image.body.config);
      const cfg = first ? await imageConfig(name, first.body.config.digest) : null;
      info.created = cfg && cfg.created ? cfg.created : "";
    } else {
      info.size = layerBytes(top.body);
      const cfg = top.body.config ? await imageConfig(name, top.body.config.digest) : null;
      if (cfg) {
        info.created = cfg.created || "";
        if (cfg.architecture) info.platforms = [platformName(cfg)];
      }
    }
    return info;
  }

  // f over items, at most PARALLEL at a time, results in order.
  async function parallel(items, f, onEach) {
    const results = new Array(items.length);
    let index = 0;
    async function worker() {
      while (index < items.length) {
        const mine = index++;
        try {
          results[mine] = await f(items[mine]);
        } catch (error) {
          results[mine] = {error};
        }
        if (onEach) onEach(mine, results[mine]);
      }
    }
    await Promise.all(Array.from({length: Math.min(PARALLEL, items.length)}, worker));
    return results;
  }

  // --- views ---

  function show(view) {
    for (const id of ["login-view", "repos-view", "tags-view"]) $(id).hidden = id !== view;
    $("session").hidden = !session || view === "login-view";
  }

  function message(text, kind) {
    $("message").textContent = text || "";
    $("message").className = kind || "";
    $("message").hidden = !text;
  }

  function humanSize(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit++;
    }
    return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
  }

  function renderRepos() {
    const words = $("repo-filter").value.trim().toLowerCase();
    const shown = words ? repositories.filter((r) => r.toLowerCase().includes(words))
      : repositories;
    const fragment = document.createDocumentFragment();
    for (const name of shown) {
      const item = el("li");
      const link = el("button", name, "repo");
      link.type = "button";
      link.dataset.repo = name;
      item.append(link);
      fragment.append(item);
    }
    $("repo-list").replaceChildren(fragment);
    $("repo-count").textContent = words ? `${shown.length} of ${repositories.length}`
      : `${repositories.length}`;
  }

  // Token auth: the token server's list of the repositories this user may pull (the
  // registry's _catalog is all or nothing), asked with the same credentials as /token.
  async function pullableRepos() {
    const response = await fetch(new URL(config.catalog, location.href), {
      headers: {Authorization: `Basic ${credentials.basic}`},
      credentials: "omit", cache: "no-store"});
    const body = await jsonOrThrow(response, "catalog");
    return Array.isArray(body.repositories) ? body.repositories.map(String) : [];
  }

  async function loadRepos() {
    show("repos-view");
    const started = performance.now();
    $("repos-status").textContent = "Loading…";
    $("repo-list").replaceChildren();
    delete $("repo-list").dataset.loadedMs;
    try {
      repositories = config.catalog ? await pullableRepos()
        : await allPages(`/v2/_catalog?n=${PAGE}`, "repositories", "catalog");
      renderRepos();
      const ms = Math.round(performance.now() - started);
      $("repos-status").textContent = repositories.length ? "" :
        "No repositories you may see.";
      $("repo-list").dataset.loadedMs = String(ms);
    } catch (error) {
      repositories = [];
      renderRepos();
      $("repos-status").textContent = error.status === 401 || error.status === 403
        ? "The registry does not list repositories for this user. Open one by name."
        : String(error.message);
    }
  }

  function digestCell(digest) {
    const cell = el("td");
    const code = el("code", digest.replace(/^sha256:/, "").slice(0, 12), "digest");
    code.title = digest;
    code.dataset.digest = digest;
    cell.append(code);
    return cell;
  }

  function tagRow(info) {
    const row = el("tr");
    row.dataset.tag = info.tag;
    row.append(el("td", info.tag, "tag"));
    if (info.error) {
      const cell = el("td", info.error.message, "error");
      cell.colSpan = 6;
      row.append(cell);
      return row;
    }
    row.append(digestCell(info.digest));
    const size = el("td", humanSize(info.size), "size");
    size.dataset.bytes = String(info.size);
    size.title = `${info.size} bytes (compressed layers)`;
    row.append(size);
    const created = el("td", info.created ? new Date(info.created).toLocaleString() : "—",
      "created");
    created.dataset.created = info.created;
    row.append(created);
    const arch = el("td", info.platforms.join(", ") || "—", "arch");
    if (INDEX_TYPES.has(info.type)) arch.append(el("span", " (index)", "hint"));
    row.append(arch);
    const pullLine = `docker pull ${config.registry}/${current.name}:${info.tag}`;
    const pull = el("td", null, "pull");
    const code = el("code", pullLine, "pull-line");
    const copy = el("button", "Copy", "copy");
    copy.type = "button";
    copy.dataset.pull = pullLine;
    pull.append(code, " ", copy);
    row.append(pull);
    const actions = el("td", null, "actions");
    actions.append(...deleteButtons(info.tag));
    row.append(actions);
    return row;
  }

  function deleteButtons(tag) {
    if (!current || !current.mayDelete) return [];
    const remove = el("button", "Delete", "delete danger");
    remove.type = "button";
    remove.dataset.tag = tag;
    return [remove];
  }

  async function openRepo(name) {
    current = {name, tags: [], mayDelete: false};
    show("tags-view");
    message("");
    $("repo-title").textContent = name;
    $("tag-count").textContent = "";
    $("tag-rows").replaceChildren();
    delete $("tag-rows").dataset.loadedMs; // set again when this repository is shown
    delete $("tag-rows").dataset.listedMs;
    $("gc-note").hidden = true;
    $("tags-status").textContent = "Loading…";
    const started = performance.now();
    const opened = current;
    try {
      const tags = (await allPages(`/v2/${repoPath(name)}/tags/list?n=${PAGE}`, "tags",
        `tags of ${name}`)).sort();
      $("tag-count").textContent = `${tags.length} tag${tags.length === 1 ? "" : "s"}`;
      const rows = tags.map((tag) => {
        const row = el("tr", null, "loading");
        row.dataset.tag = tag;
        row.append(el("td", tag, "tag"), el("td", "…"));
        return row;
      });
      $("tag-rows").replaceChildren(...rows);
      // After the tag list: with token auth its challenge told the token service's name.
      const allowed = await mayDelete(name);
      if (current !== opened) return;
      current.mayDelete = allowed;
      $("gc-note").hidden = !allowed;
      $("tag-rows").dataset.listedMs = String(Math.round(performance.now() - started));
      const infos = await parallel(tags, (tag) => describeTag(name, tag), (i, info) => {
        if (current !== opened) return;
        const row = tagRow(info.error ? {tag: tags[i], error: info.error} : info);
        rows[i].replaceWith(row);
        rows[i] = row;
      });
      if (current !== opened) return;
      current.tags = infos.map((info, i) => (info.error ? {tag: tags[i], error: info.error}
        : info));
      $("tags-status").textContent = tags.length ? "" : "No tags.";
      $("tag-rows").dataset.loadedMs = String(Math.round(performance.now() - started));
    } catch (error) {
      $("tags-status").textContent = error.status === 401 || error.status === 403
        ? `You may not see ${name}.` : error.status === 404 ? `No repository ${name}.`
          : String(error.message);
    }
  }

  async function copyPull(button) {
    const text = button.dataset.pull;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (_) {
      // No clipboard access (permissions): select the line so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents(button.previousElementSibling || button);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  }

  function askDelete(tag) {
    const info = current.tags.find((t) => t.tag === tag);
    if (!info || !info.digest) return;
    const same = current.tags.filter((t) => t.digest === info.digest).map((t) => t.tag);
    $("confirm-ref").textContent = `${current.name}:${tag}`;
    $("confirm-digest").textContent = info.digest;
    $("confirm-tags").textContent = same.join(", ");
    const dialog = $("confirm-delete");
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "delete") deleteManifest(current.name, info.digest, same);
    };
    dialog.showModal();
  }

  async function deleteManifest(name, digest, tags) {
    const response = await api(`/v2/${repoPath(name)}/manifests/${digest}`, {method: "DELETE"});
    if (response.status === 202) {
      await openRepo(name);
      message(`Deleted ${name}:${tags.join(", ")} (${digest}). The space is freed when ` +
        "garbage collection runs (pyinfra INVENTORY garbage_collect.py).", "ok");
    } else if (response.status === 401 || response.status === 403) {
      message(`You may not delete ${name}:${tags.join(", ")}.`, "error");
    } else if (response.status === 405) {
      message("This registry does not allow deleting (registry_delete_enabled).", "error");
    } else {
      message(`Deleting ${name}:${tags.join(", ")} failed: the registry answered ` +
        `${response.status}.`, "error");
    }
  }

  // --- login ---

  function basic(user, password) {
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    return btoa(String.fromCharCode(...bytes));
  }

  async function login(event) {
    event.preventDefault();
    const user = $("login-user").value;
    const password = $("login-password").value;
    $("login-error").hidden = true;
    $("login-submit").disabled = true;
    credentials = {user, basic: basic(user, password)};
    tokens = new Map();
    challenged = new Map();
    $("login-password").value = ""; // the field does not keep it either
    try {
      const response = await api("/v2/");
      if (response.status === 200) {
        session = true;
        $("session-user").textContent = user;
        await loadRepos();
        return;
      }
      credentials = null;
      $("login-error").textContent = response.status === 401
        ? "Wrong user name or password. Nothing was shown: log in with a registry user."
        : `The registry answered ${response.status}; try again later.`;
    } catch (error) {
      credentials = null;
      $("login-error").textContent = `The registry cannot be reached (${error.message}).`;
    } finally {
      $("login-submit").disabled = false;
    }
    $("login-error").hidden = false;
  }

  function logout() {
    credentials = null;
    session = false;
    tokens = new Map();
    challenged = new Map();
    configs = new Map();
    repositories = [];
    current = null;
    $("repo-list").replaceChildren();
    $("tag-rows").replaceChildren();
    message("");
    show("login-view");
  }

  async function start() {
    try {
      const response = await fetch("config.json", {cache: "no-store", credentials: "omit"});
      config = await response.json();
    } catch (_) { /* defaults: no delete */ }
    $("registry-name").textContent = config.registry;
    document.title = `Registry ${config.registry}`;
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("back").addEventListener("click", () => { current = null; message(""); show("repos-view"); });
    $("repo-filter").addEventListener("input", renderRepos);
    $("open-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("open-name").value.trim();
      if (name) openRepo(name);
    });
    $("repo-list").addEventListener("click", (event) => {
      const button = event.target.closest("button.repo");
      if (button) openRepo(button.dataset.repo);
    });
    $("tag-rows").addEventListener("click", (event) => {
      const copy = event.target.closest("button.copy");
      if (copy) copyPull(copy);
      const remove = event.target.closest("button.delete");
      if (remove) askDelete(remove.dataset.tag);
    });
    show("login-view");
    $("login-user").focus();
  }

  start();
})();
