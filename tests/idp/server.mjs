// A real OpenID provider (panva/oidc-provider, OpenID Certified) for scopegate's integration
// tests, started by tests/support/idp.rs. It serves HTTPS on a loopback port with a certificate
// from the test's own CA, under a Keycloak-style issuer path (`/realms/test`), and issues
// RFC 9068 JWT access tokens (and opaque ones) through the client credentials grant, with
// resource indicators, introspection, revocation, DPoP (RFC 9449) and certificate-bound
// access tokens (RFC 8705).
//
//   node server.mjs <config.json>
//
// config.json: {"cert_file","key_file", "port" (0: any), "jwks_max_age" (seconds, optional),
//               "realm" (default "test")}
// Prints one JSON line once listening: {"port":…, "issuer":"https://127.0.0.1:…/realms/test"}.
//
// Test-only endpoints (outside the issuer path, so no real client can confuse them):
//   GET  /__test/stats    {"jwks":n,"discovery":n,"introspection":n,"token":n,"kids":[…]}
//   POST /__test/rotate   add a new RSA signing key, used for new tokens; the old ones stay published
//   POST /__test/retire   publish only the newest signing key (and the encryption key)
//   POST /__test/jwks-mode?mode=ok|garbage|error   make /jwks answer normally, with garbage, or 500
//   POST /__test/jwks-max-age?seconds=N   Cache-Control: max-age on /jwks from now on (none: unset)
//   POST /__test/introspection-mode?mode=ok|error|slow   introspection answers, 500s, or waits 3 s
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const realmPath = `/realms/${config.realm ?? 'test'}`;

/** Resource servers (RFC 8707 resource indicators): one with JWT access tokens, one opaque. */
const RESOURCES = {
  'https://orders.test/jwt': {
    audience: 'orders-api',
    scope: 'orders:read orders:write orders:admin',
    accessTokenTTL: 600,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  },
  'https://orders.test/es256': {
    audience: 'orders-api',
    scope: 'orders:read orders:write orders:admin',
    accessTokenTTL: 600,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'ES256' } },
  },
  'https://orders.test/opaque': {
    audience: 'orders-api',
    scope: 'orders:read orders:write orders:admin',
    accessTokenTTL: 600,
    accessTokenFormat: 'opaque',
  },
};

const CLIENTS = [
  // Plain client credentials; may also ask for DPoP-bound tokens by sending a DPoP proof.
  {
    client_id: 'orders-client',
    client_secret: 'orders-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'orders:read orders:write orders:admin',
  },
  // Always gets DPoP-bound tokens (RFC 9449 §5.2 dpop_bound_access_tokens).
  {
    client_id: 'dpop-client',
    client_secret: 'dpop-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'orders:read orders:write orders:admin',
    dpop_bound_access_tokens: true,
  },
  // Gets certificate-bound tokens (RFC 8705 §3): cnf.x5t#S256 of the TLS client certificate.
  {
    client_id: 'mtls-client',
    client_secret: 'mtls-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'orders:read orders:write orders:admin',
    tls_client_certificate_bound_access_tokens: true,
  },
  // scopegate itself, as the resource server that introspects (RFC 7662 §2.1 client auth).
  {
    client_id: 'scopegate',
    client_secret: 'scopegate-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];

function rsaSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `rsa-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

function ecSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `ec-${crypto.randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' };
}

// Like Keycloak, publish an encryption key beside the signing keys: scopegate must skip it.
function rsaEncryptionKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: 'enc-1', alg: 'RSA-OAEP', use: 'enc' };
}

// Newest RSA signing key first: oidc-provider signs with the first key that fits the alg.
let signingKeys = [rsaSigningKey()];
const ecKey = ecSigningKey();
const encryptionKey = rsaEncryptionKey();
const stats = { jwks: 0, discovery: 0, introspection: 0, token: 0 };
let jwksMode = 'ok';
let jwksMaxAge = config.jwks_max_age;
let introspectionMode = 'ok';

function peerCertificate(ctx) {
  const peer = ctx.socket.getPeerCertificate?.(false);
  if (!peer || !peer.raw) return undefined;
  return new crypto.X509Certificate(peer.raw);
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: CLIENTS,
    scopes: ['openid', 'orders:read', 'orders:write', 'orders:admin'],
    jwks: { keys: [...signingKeys, ecKey, encryptionKey] },
    features: {
      devInteractions: { enabled: false },
      // Lets the provider hold an encryption key, which it then publishes in its JWKS.
      encryption: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      dPoP: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate: peerCertificate,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => 'https://orders.test/jwt',
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          const info = RESOURCES[resourceIndicator];
          if (!info) throw new Provider.errors.InvalidTarget();
          return info;
        },
      },
    },
    ttl: { ClientCredentials: 600 },
    enabledJWA: { dPoPSigningAlgValues: ['ES256', 'RS256', 'PS256', 'EdDSA', 'Ed25519'] },
  });
  provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));
  return provider;
}

let issuer;
let handler;

function rebuild() {
  handler = buildProvider(issuer).callback();
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function testEndpoint(req, res, url) {
  switch (`${req.method} ${url.pathname}`) {
    case 'GET /__test/stats':
      return json(res, 200, { ...stats, kids: signingKeys.map((k) => k.kid) });
    case 'POST /__test/rotate':
      signingKeys = [rsaSigningKey(), ...signingKeys];
      rebuild();
      return json(res, 200, { kids: signingKeys.map((k) => k.kid) });
    case 'POST /__test/retire':
      signingKeys = [signingKeys[0]];
      rebuild();
      return json(res, 200, { kids: signingKeys.map((k) => k.kid) });
    case 'POST /__test/jwks-mode':
      jwksMode = url.searchParams.get('mode') ?? 'ok';
      return json(res, 200, { mode: jwksMode });
    case 'POST /__test/jwks-max-age': {
      const seconds = url.searchParams.get('seconds');
      jwksMaxAge = seconds === null ? undefined : Number(seconds);
      return json(res, 200, { max_age: jwksMaxAge ?? null });
    }
    case 'POST /__test/introspection-mode':
      introspectionMode = url.searchParams.get('mode') ?? 'ok';
      return json(res, 200, { mode: introspectionMode });
    default:
      return json(res, 404, { error: 'unknown test endpoint' });
  }
}

function serve(req, res) {
  const url = new URL(req.url, 'https://127.0.0.1');
  if (url.pathname.startsWith('/__test/')) return testEndpoint(req, res, url);
  if (!url.pathname.startsWith(`${realmPath}/`)) return json(res, 404, { error: 'not found' });
  // Mounted under the issuer path, as Keycloak serves realms: oidc-provider derives its mount
  // path from originalUrl.
  req.originalUrl = req.url;
  req.url = req.url.slice(realmPath.length);
  const route = url.pathname.slice(realmPath.length);
  if (route === '/jwks') {
    stats.jwks += 1;
    if (jwksMode === 'garbage') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end('{"keys": "not a key set"');
    }
    if (jwksMode === 'error') return json(res, 500, { error: 'server_error' });
    if (jwksMaxAge !== undefined && jwksMaxAge !== null) {
      const maxAge = jwksMaxAge;
      const writeHead = res.writeHead.bind(res);
      res.writeHead = (status, ...rest) => {
        res.setHeader('cache-control', `max-age=${maxAge}`);
        return writeHead(status, ...rest);
      };
    }
  } else if (route === '/.well-known/openid-configuration') {
    stats.discovery += 1;
  } else if (route === '/token/introspection') {
    stats.introspection += 1;
    if (introspectionMode === 'error') return json(res, 500, { error: 'server_error' });
    if (introspectionMode === 'slow') {
      return setTimeout(() => handler(req, res), 3000);
    }
  } else if (route === '/token') {
    stats.token += 1;
  }
  return handler(req, res);
}

const server = https.createServer(
  {
    cert: fs.readFileSync(config.cert_file),
    key: fs.readFileSync(config.key_file),
    // Ask for a client certificate (certificate-bound tokens) but do not require one and do not
    // judge it: RFC 8705 §3 binds self-signed certificates too.
    requestCert: true,
    rejectUnauthorized: false,
  },
  serve,
);

server.on('clientError', (err) => console.error('idp clientError', err.code, err.message));
server.on('tlsClientError', (err) => console.error('idp tlsClientError', err.code, err.message));

server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `https://127.0.0.1:${port}${realmPath}`;
  rebuild();
  process.stdout.write(`${JSON.stringify({ port, issuer })}\n`);
});

// Stop when the test that started us goes away (stdin closes), not only on a signal.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
