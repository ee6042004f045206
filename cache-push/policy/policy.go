// Package policy is the pusher's gate: which builders are trusted, with
// which keys, for which systems. Everything not allowed is denied.
package policy

import (
	"path"
	"strings"
	"time"

	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/sigstore/sigstore-go/pkg/root"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"

	"gopkg.in/yaml.v3"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/queue"
)

// ErrDenied is the root of every policy refusal.
var ErrDenied = errors.New("denied by policy")

var (
	// ErrBuilderNotTrusted: the result's builder id is not in the policy.
	ErrBuilderNotTrusted = fmt.Errorf("%w: builder not trusted", ErrDenied)
	// ErrSystemNotAllowed: the result's system is not allowed.
	ErrSystemNotAllowed = fmt.Errorf("%w: system not allowed", ErrDenied)
	// ErrTenantNotAllowed: the result's tenant is not served by this policy.
	ErrTenantNotAllowed = fmt.Errorf("%w: tenant not allowed", ErrDenied)
)

// Example is a commented policy, as `provenix up` writes it on first start.
const Example = `# Provenix cache policy. Anything not allowed here is refused.
#
# tenants: results of which tenants this pusher publishes.
tenants: [default]
# systems: Nix system types whose outputs may be published.
systems: [x86_64-linux, aarch64-linux, x86_64-darwin, aarch64-darwin]
# quorum: how many independent builders must produce the same NAR before a
# path is published (default 1). distinct: builder | owner | host.
# on_disagreement: block (default) | trusted-only (publish the output of the
# builder named in trusted, labelled unverified-by-quorum).
#   quorum: {min: 2, distinct: owner, on_disagreement: block}
# overrides: other rules for some systems or derivation names (globs):
#   overrides:
#     - names: ["*-firefox-*"]
#       quorum: {on_disagreement: trusted-only, trusted: local}
# reputation: quarantine a builder after this many minority votes in window.
#   reputation: {quarantine_after: 3, window: 168h}
# builders: who may publish, each with the one builder id its key may claim.
# key is a PEM public key file (relative to this file) or inline PEM; owner
# and host group builders for quorum.distinct; nix_key ("name:base64") lets
# its Nix signature join the narinfo. A keyless builder gives an identity
# instead of a key (a Fulcio certificate from a private Sigstore whose
# trusted_root.json is named at the top level):
#   trusted_root: sigstore/trusted_root.json
#   builders:
#     - id: forge:distro/pkgs
#       identity: {issuer: "https://forge.example/api/actions",
#                  san_regexp: '^https://forge\.example/distro/pkgs/.*@refs/tags/.*$'}
# A builder trusted through several OIDC issuers lists them all; each
# identity speaks only for its own builder id:
#     - id: ci:distro/pkgs
#       identities:
#         - {issuer: "https://forge.example/api/actions", san: "..."}
#         - {issuer: "https://ci.example", san: "..."}
# closure: a path is published only when every path it refers to is in this
# cache or in an upstream below; until then it waits, and after timeout an
# "incomplete" event says what is missing.
#   closure: {timeout: 1h}
# upstreams: other binary caches whose signed paths count as present.
#   upstreams:
#     - url: https://cache.nixos.org
#       public_keys: ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
# require_tlog: true also demands that key-signed bundles carry an entry from
# a transparency log listed in trusted_root (e.g. a Rekor v2 log).
builders:
  - id: local
    key: keys/builder.pub
`

// Policy is a parsed, checked policy file.
type Policy struct {
	Tenants  []string  `yaml:"tenants"`
	Systems  []string  `yaml:"systems"`
	Builders []Builder `yaml:"builders"`
	// Quorum is how many independent builders must agree on a NAR before
	// it is published; absent means one (any trusted builder).
	Quorum Quorum `yaml:"quorum"`
	// Overrides replace the quorum rule for some systems or derivation
	// names; the first matching entry wins.
	Overrides []Override `yaml:"overrides"`
	// Reputation sets when a builder that keeps disagreeing is quarantined.
	Reputation Reputation `yaml:"reputation"`
	// Sources, when set, are the repositories (globs over the signed
	// source or forge-job repository, e.g. "https://codeberg.org/distro/*"
	// or "distro/*") whose builds may be published; a build naming none is
	// refused too. Empty allows any.
	Sources []string `yaml:"sources"`
	// TrustedRoot is the Sigstore trusted_root.json (Fulcio CA, Rekor and
	// CT logs) keyless builders' certificates must chain to; RequireSCT
	// also demands a certificate transparency timestamp.
	TrustedRoot string `yaml:"trusted_root"`
	RequireSCT  bool   `yaml:"require_sct"`
	// RequireTlog makes key-signed bundles need an entry from a
	// transparency log in TrustedRoot too (keyless ones always do).
	RequireTlog bool `yaml:"require_tlog"`
	// Upstreams are other binary caches whose paths count as present: a
	// path referring to one of their paths is published without it.
	// Each path is checked by fetching its narinfo there and verifying
	// its signature with one of the upstream's keys.
	Upstreams []Upstream `yaml:"upstreams"`
	// Closure rules how long an entry may wait for its references.
	Closure Closure `yaml:"closure"`
	// RequireIsolation lists the isolation a forge job's provenance must
	// record (attest.Workflow.Isolation: uid, cgroup, private-tmp); see
	// CheckIsolation.
	RequireIsolation []string `yaml:"require_isolation"`
	trusted          root.TrustedMaterial

	keys    map[string]*ecdsa.PublicKey // by builder id
	source  []byte                      // the file as parsed (Document)
	nixKeys map[string]signature.PublicKey
	byID    map[string]*Builder
}

// Builder is one trusted builder.
type Builder struct {
	ID  string `yaml:"id"`
	Key string `yaml:"key"`
	// Owner and Host say who runs the builder and on what class of
	// machine: a quorum may require agreement across owners or hosts.
	// Empty means the builder id itself.
	Owner string `yaml:"owner"`
	Host  string `yaml:"host"`
	// NixKey is the builder's Nix signing public key ("name:base64"); when
	// set, the builder's Nix signature over the narinfo fingerprint is
	// added to published narinfos as one more Sig line.
	NixKey string `yaml:"nix_key"`
	// Identity makes a keyless builder: bundles signed by a Fulcio
	// certificate for this OIDC identity (e.g. a Forgejo workflow) are
	// trusted for the builder id. Give either key or identity.
	Identity *Identity `yaml:"identity"`
	// Identities are several such identities, each from its own OIDC
	// issuer if need be (two forges, a forge and a CI): a certificate
	// for any of them is trusted for this builder id, and for no other.
	// Parse folds Identity into it.
	Identities []Identity `yaml:"identities"`
}

// Upstream is a binary cache trusted for the paths it serves signed.
type Upstream struct {
	URL string `yaml:"url"`
	// PublicKeys are Nix public keys ("name:base64"); a narinfo signed by
	// any of them counts.
	PublicKeys []string `yaml:"public_keys"`
}

// Closure: a path is published only once every path it refers to is in
// the cache (or an upstream). Timeout is how long it may wait before an
// "incomplete" event reports what is missing (it keeps waiting).
type Closure struct {
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultClosureTimeout is Closure.Timeout when the policy sets none.
const DefaultClosureTimeout = time.Hour

// Identity is a certificate identity: OIDC issuer and subject alternative
// name, each exact or as a regular expression.
type Identity struct {
	Issuer       string `yaml:"issuer"`
	IssuerRegexp string `yaml:"issuer_regexp"`
	SAN          string `yaml:"san"`
	SANRegexp    string `yaml:"san_regexp"`
}

func (id Identity) issuer() string {
	if id.Issuer != "" {
		return id.Issuer
	}
	return "~" + id.IssuerRegexp
}

func (id Identity) san() string {
	if id.SAN != "" {
		return id.SAN
	}
	return "~" + id.SANRegexp
}

// Distinct names what agreeing votes must differ in.
const (
	DistinctBuilder = "builder"
	DistinctOwner   = "owner"
	DistinctHost    = "host"
)

// Disagreement ladder.
const (
	OnDisagreementBlock       = "block"
	OnDisagreementTrustedOnly = "trusted-only"
)

// Quorum is the agreement a path needs.
type Quorum struct {
	Min      int    `yaml:"min"`
	Distinct string `yaml:"distinct"`
	// OnDisagreement: block (nothing is published while builders
	// disagree) or trusted-only (publish the output of Trusted, labelled
	// unverified-by-quorum in the provenance sidecar).
	OnDisagreement string `yaml:"on_disagreement"`
	Trusted        string `yaml:"trusted"`
	// TrustedAfter enables adaptive replication: a builder with at least
	// this many agreements and no recent minority vote counts for one
	// more confirmation, so a path needs one vote fewer — except on the
	// SpotCheck fraction of paths (chosen by path hash, so every pusher
	// picks the same ones), which always need the full quorum.
	TrustedAfter int     `yaml:"trusted_after"`
	SpotCheck    float64 `yaml:"spot_check"`
}

// Override is a quorum rule for tenants, systems and/or derivation names
// (glob patterns over the name part of the store path, e.g. "*-firefox-*").
type Override struct {
	Tenants []string `yaml:"tenants"`
	Systems []string `yaml:"systems"`
	Names   []string `yaml:"names"`
	Quorum  Quorum   `yaml:"quorum"`
}

// Reputation: a builder in the minority QuarantineAfter times within
// Window is quarantined until an operator clears it.
type Reputation struct {
	QuarantineAfter int           `yaml:"quarantine_after"`
	Window          time.Duration `yaml:"window"`
}

// Load reads a policy file; relative key paths are resolved against its
// directory.
func Load(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// Parse reads a policy. Unknown fields are errors: a misspelt rule that
// silently did nothing would be a hole in a default-deny policy.
func Parse(data []byte, baseDir string) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	p.source = bytes.Clone(data)
	if len(p.Builders) == 0 {
		return nil, errors.New("no builders: nothing could ever be published")
	}
	for _, t := range p.Tenants {
		if err := queue.ValidToken(t); err != nil {
			return nil, fmt.Errorf("tenant: %w", err)
		}
	}
	if err := p.Quorum.check(nil); err != nil {
		return nil, fmt.Errorf("quorum: %w", err)
	}
	p.Quorum.fill(Quorum{Min: 1, Distinct: DistinctBuilder, OnDisagreement: OnDisagreementBlock})
	for i := range p.Overrides {
		o := &p.Overrides[i]
		if len(o.Tenants) == 0 && len(o.Systems) == 0 && len(o.Names) == 0 {
			return nil, fmt.Errorf("overrides[%d]: matches nothing (give tenants, systems or names)", i)
		}
		for _, n := range o.Names {
			if _, err := path.Match(n, ""); err != nil {
				return nil, fmt.Errorf("overrides[%d]: name pattern %q: %w", i, n, err)
			}
		}
		if err := o.Quorum.check(nil); err != nil {
			return nil, fmt.Errorf("overrides[%d]: quorum: %w", i, err)
		}
		o.Quorum.fill(p.Quorum)
	}
	if p.Reputation.QuarantineAfter < 0 || p.Reputation.Window < 0 {
		return nil, errors.New("reputation: negative quarantine_after or window")
	}
	if p.Reputation.QuarantineAfter == 0 {
		p.Reputation.QuarantineAfter = 3
	}
	if p.Reputation.Window == 0 {
		p.Reputation.Window = 7 * 24 * time.Hour
	}
	if p.Closure.Timeout < 0 {
		return nil, errors.New("closure: negative timeout")
	}
	if p.Closure.Timeout == 0 {
		p.Closure.Timeout = DefaultClosureTimeout
	}
	for i, u := range p.Upstreams {
		if err := u.check(); err != nil {
			return nil, fmt.Errorf("upstreams[%d]: %w", i, err)
		}
	}
	p.keys = make(map[string]*ecdsa.PublicKey, len(p.Builders))
	p.nixKeys = map[string]signature.PublicKey{}
	p.byID = map[string]*Builder{}
	keyOwner := map[string]string{}  // key id → builder id
	idOwner := map[Identity]string{} // identity → builder id
	for i := range p.Builders {
		b := &p.Builders[i]
		p.byID[b.ID] = b
		if b.NixKey != "" {
			nk, err := signature.ParsePublicKey(b.NixKey)
			if err != nil {
				return nil, fmt.Errorf("builder %s: nix_key: %w", b.ID, err)
			}
			p.nixKeys[b.ID] = nk
		}
		if b.ID == "" {
			return nil, fmt.Errorf("builders[%d]: no id", i)
		}
		if dup := slices.IndexFunc(p.Builders[:i], func(o Builder) bool { return o.ID == b.ID }); dup >= 0 {
			return nil, fmt.Errorf("builders[%d]: id %q listed twice", i, b.ID)
		}
		if b.Identity != nil {
			if len(b.Identities) > 0 {
				return nil, fmt.Errorf("builder %s: give identity or identities, not both", b.ID)
			}
			b.Identities, b.Identity = []Identity{*b.Identity}, nil
		}
		if len(b.Identities) > 0 {
			if b.Key != "" {
				return nil, fmt.Errorf("builder %s: give key or identity, not both", b.ID)
			}
			for _, id := range b.Identities {
				if (id.Issuer == "") == (id.IssuerRegexp == "") || (id.SAN == "") == (id.SANRegexp == "") {
					return nil, fmt.Errorf("builder %s: identity needs one of issuer/issuer_regexp and one of san/san_regexp", b.ID)
				}
				// Like a key, an identity speaks for one builder id:
				// shared, one signer would be two votes of a quorum.
				if other, dup := idOwner[id]; dup && other != b.ID {
					return nil, fmt.Errorf("builders %s and %s share the identity %s from %s: each builder needs its own", other, b.ID, id.san(), id.issuer())
				}
				idOwner[id] = b.ID
			}
			continue
		}
		pem := []byte(b.Key)
		if !bytes.Contains(pem, []byte("-----BEGIN")) {
			path := b.Key
			if !filepath.IsAbs(path) {
				path = filepath.Join(baseDir, path)
			}
			var err error
			if pem, err = os.ReadFile(path); err != nil {
				return nil, fmt.Errorf("builder %s: key: %w", b.ID, err)
			}
		}
		k, err := attest.ParsePublicKey(pem)
		if err != nil {
			return nil, fmt.Errorf("builder %s: %w", b.ID, err)
		}
		// A key speaks for exactly one builder id (attest.NewVerifier
		// refuses a shared one): say so here, at load, naming both.
		kid, err := attest.KeyID(k)
		if err != nil {
			return nil, fmt.Errorf("builder %s: %w", b.ID, err)
		}
		if other, dup := keyOwner[kid]; dup {
			return nil, fmt.Errorf("builders %s and %s share a key: each builder needs its own", other, b.ID)
		}
		keyOwner[kid] = b.ID
		p.keys[b.ID] = k
	}
	if p.TrustedRoot != "" {
		path := p.TrustedRoot
		if !filepath.IsAbs(path) {
			path = filepath.Join(baseDir, path)
		}
		tr, err := root.NewTrustedRootFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("trusted_root: %w", err)
		}
		p.trusted = tr
	}
	if err := checkIsolationNames(p.RequireIsolation); err != nil {
		return nil, err
	}
	if p.RequireTlog && p.TrustedRoot == "" {
		return nil, errors.New("require_tlog: needs trusted_root (the transparency log's trusted_root.json)")
	}
	for _, q := range append([]Quorum{p.Quorum}, overrideQuorums(p.Overrides)...) {
		if q.Trusted != "" {
			if _, ok := p.byID[q.Trusted]; !ok {
				return nil, fmt.Errorf("quorum: trusted builder %q is not among the builders", q.Trusted)
			}
		}
		if q.OnDisagreement == OnDisagreementTrustedOnly && q.Trusted == "" {
			return nil, errors.New("quorum: on_disagreement trusted-only needs a trusted builder")
		}
	}
	return &p, nil
}

func (u Upstream) check() error {
	l, err := url.Parse(u.URL)
	if err != nil || (l.Scheme != "http" && l.Scheme != "https") || l.Host == "" {
		return fmt.Errorf("url %q: want http(s)://host[/path]", u.URL)
	}
	if len(u.PublicKeys) == 0 {
		return fmt.Errorf("%s: no public_keys: its paths could not be checked", u.URL)
	}
	for _, k := range u.PublicKeys {
		if _, err := signature.ParsePublicKey(k); err != nil {
			return fmt.Errorf("%s: public key %q: %w", u.URL, k, err)
		}
	}
	return nil
}

func overrideQuorums(os []Override) []Quorum {
	out := make([]Quorum, len(os))
	for i, o := range os {
		out[i] = o.Quorum
	}
	return out
}

func (q *Quorum) check(_ *Quorum) error {
	if q.Min < 0 || q.TrustedAfter < 0 {
		return fmt.Errorf("min %d / trusted_after %d is negative", q.Min, q.TrustedAfter)
	}
	if q.SpotCheck < 0 || q.SpotCheck > 1 {
		return fmt.Errorf("spot_check %v: want 0..1", q.SpotCheck)
	}
	switch q.Distinct {
	case "", DistinctBuilder, DistinctOwner, DistinctHost:
	default:
		return fmt.Errorf("distinct %q: want builder, owner or host", q.Distinct)
	}
	switch q.OnDisagreement {
	case "", OnDisagreementBlock, OnDisagreementTrustedOnly:
	default:
		return fmt.Errorf("on_disagreement %q: want block or trusted-only", q.OnDisagreement)
	}
	return nil
}

// fill sets unset fields from def.
func (q *Quorum) fill(def Quorum) {
	if q.Min == 0 {
		q.Min = def.Min
	}
	if q.Distinct == "" {
		q.Distinct = def.Distinct
	}
	if q.TrustedAfter == 0 {
		q.TrustedAfter, q.SpotCheck = def.TrustedAfter, def.SpotCheck
	}
	if q.OnDisagreement == "" {
		q.OnDisagreement = def.OnDisagreement
		if q.Trusted == "" {
			q.Trusted = def.Trusted
		}
	}
}

// QuorumFor returns the rule for an output of a derivation for system in
// tenant.
func (p *Policy) QuorumFor(tenant, system, storePath string) Quorum {
	name := path.Base(storePath)
	if _, rest, ok := strings.Cut(name, "-"); ok {
		name = rest
	}
	for _, o := range p.Overrides {
		if len(o.Tenants) > 0 && !slices.Contains(o.Tenants, tenant) {
			continue
		}
		if len(o.Systems) > 0 && !slices.Contains(o.Systems, system) {
			continue
		}
		if len(o.Names) > 0 && !slices.ContainsFunc(o.Names, func(pat string) bool {
			m, _ := path.Match(pat, name)
			return m
		}) {
			continue
		}
		return o.Quorum
	}
	return p.Quorum
}

// BuilderIDs lists the policy's builder ids.
func (p *Policy) BuilderIDs() []string {
	ids := make([]string, len(p.Builders))
	for i, b := range p.Builders {
		ids[i] = b.ID
	}
	return ids
}

// Builder returns the policy's entry for id.
func (p *Policy) Builder(id string) (Builder, bool) {
	b, ok := p.byID[id]
	if !ok {
		return Builder{}, false
	}
	return *b, true
}

// DistinctKey is what a vote of builder id counts as under distinct.
func (p *Policy) DistinctKey(id, distinct string) string {
	b, ok := p.byID[id]
	if !ok {
		return id
	}
	switch distinct {
	case DistinctOwner:
		if b.Owner != "" {
			return "owner:" + b.Owner
		}
	case DistinctHost:
		if b.Host != "" {
			return "host:" + b.Host
		}
	}
	return "builder:" + id
}

// CountDistinct is how many distinct voters builders are under distinct:
// the one count of "N independent builders" that the pusher's tally,
// `provenix status` and `provenix verify` share.
func (p *Policy) CountDistinct(builders []string, distinct string) int {
	keys := make(map[string]bool, len(builders))
	for _, id := range builders {
		keys[p.DistinctKey(id, distinct)] = true
	}
	return len(keys)
}

// NixKeyNamed returns the Nix public key of one of the policy's builders
// whose key name is name.
func (p *Policy) NixKeyNamed(name string) (signature.PublicKey, bool) {
	for _, id := range slices.Sorted(maps.Keys(p.nixKeys)) {
		if k := p.nixKeys[id]; k.Name == name {
			return k, true
		}
	}
	return signature.PublicKey{}, false
}

// NixKey returns the builder's Nix public key, if it has one.
func (p *Policy) NixKey(id string) (signature.PublicKey, bool) {
	k, ok := p.nixKeys[id]
	return k, ok
}

// Check applies the rules that need no signature: cheap, so hostile
// results are turned away before any cryptography or I/O.
func (p *Policy) Check(r *queue.Result) error {
	if !slices.Contains(p.Tenants, r.Tenant) {
		return fmt.Errorf("%w: %q", ErrTenantNotAllowed, r.Tenant)
	}
	if !slices.Contains(p.Systems, r.System) {
		return fmt.Errorf("%w: %q", ErrSystemNotAllowed, r.System)
	}
	if _, ok := p.byID[r.Builder]; !ok {
		return fmt.Errorf("%w: %q", ErrBuilderNotTrusted, r.Builder)
	}
	return nil
}
