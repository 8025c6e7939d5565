// A real OpenID provider for the tests (oidc-provider from npm, installed by `make idp`).
// Configuration comes as JSON on stdin: {host, port, issuer_path, clients, accounts, jwks}.
// It listens on a port the OS picks and prints one JSON line {"issuer": ..., "port": ...} once
// ready, so the fixture never guesses a free port. Accounts sign in with a small form of our
// own (username and password) instead of oidc-provider's dev interactions, which take any name.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(0, 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.username, a]));
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>` +
    `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      data += chunk;
      if (data.length > 16384) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(data))));
    req.on('error', reject);
  });
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients,
    findAccount: async (ctx, id) => {
      const account = [...accounts.values()].find((a) => a.claims.sub === id);
      if (!account) return undefined;
      return { accountId: id, claims: async () => ({ ...account.claims }) };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'picture'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => false },
    cookies: { keys: [config.cookie_key] },
    // the signing keys the fixture made (a test restarts the provider with new ones: key rotation)
    ...(config.jwks ? { jwks: { keys: config.jwks } } : {}),
    ttl: { IdToken: config.id_token_ttl || 3600, AccessToken: 3600, Interaction: 600, Session: 3600, Grant: 3600 },
    // first-party clients: no consent screen, the grant covers what the client asked for
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
      grant.addOIDCClaims(['email', 'email_verified', 'name', 'preferred_username', 'picture', 'groups']);
      await grant.save();
      return grant;
    },
  });
  provider.proxy = false;
  return provider;
}

async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page('Sign in to the test IdP',
      `<form method="post" action="/interaction/${escape(uid)}/login">` +
      '<label>Username <input name="username" id="username" autocomplete="off"></label> ' +
      '<label>Password <input name="password" id="password" type="password"></label> ' +
      '<button type="submit" id="signin">Sign in</button></form>' +
      `<form method="post" action="/interaction/${escape(uid)}/abort">` +
      '<button type="submit" id="cancel">Cancel</button></form>'));
    return;
  }
  if (action === 'abort') {
    await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user cancelled the sign-in' }, { mergeWithLastSubmission: false });
    return;
  }
  const form = await readForm(req);
  const account = accounts.get(form.username);
  if (!account || account.password !== form.password) {
    res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page('Sign in to the test IdP', '<p id="error">wrong username or password</p>'));
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: account.claims.sub } }, { mergeWithLastSubmission: false });
}

let provider = null;
const server = http.createServer(async (req, res) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/.exec(req.url.split('?')[0]);
  if (!match) return provider.callback()(req, res);
  try {
    await interaction(provider, req, res, match[1], match[2]);
  } catch (err) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`interaction failed: ${err.message}\n`);
  }
});
server.listen(config.port || 0, config.host, () => {
  const { port } = server.address();
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const issuer = `http://${host}:${port}${config.issuer_path || ''}`;
  provider = makeProvider(issuer);
  process.stdout.write(JSON.stringify({ issuer, port }) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
