// Package policy is the pusher's gate: which builders are trusted, with
// which keys, for which systems. Everything not allowed is denied.
package policy

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
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
# builders: who may publish, each with the one builder id its key may claim.
# key is a PEM public key file (relative to this file) or inline PEM.
builders:
  - id: local
    key: keys/builder.pub
`

// Policy is a parsed, checked policy file.
type Policy struct {
	Tenants  []string  `yaml:"tenants"`
	Systems  []string  `yaml:"systems"`
	Builders []Builder `yaml:"builders"`

	keys map[string]*ecdsa.PublicKey // by builder id
}

// Builder is one trusted builder.
type Builder struct {
	ID  string `yaml:"id"`
	Key string `yaml:"key"`
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
	if len(p.Builders) == 0 {
		return nil, errors.New("no builders: nothing could ever be published")
	}
	for _, t := range p.Tenants {
		if err := queue.ValidToken(t); err != nil {
			return nil, fmt.Errorf("tenant: %w", err)
		}
	}
	p.keys = make(map[string]*ecdsa.PublicKey, len(p.Builders))
	for i, b := range p.Builders {
		if b.ID == "" {
			return nil, fmt.Errorf("builders[%d]: no id", i)
		}
		if _, dup := p.keys[b.ID]; dup {
			return nil, fmt.Errorf("builders[%d]: id %q listed twice", i, b.ID)
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
		p.keys[b.ID] = k
	}
	return &p, nil
}

// Verifier returns a bundle verifier trusting exactly the policy's builders.
func (p *Policy) Verifier() (*attest.Verifier, error) {
	tb := make([]attest.TrustedBuilder, 0, len(p.Builders))
	for _, b := range p.Builders {
		tb = append(tb, attest.TrustedBuilder{ID: b.ID, PublicKey: p.keys[b.ID]})
	}
	return attest.NewVerifier(tb)
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
	if _, ok := p.keys[r.Builder]; !ok {
		return fmt.Errorf("%w: %q", ErrBuilderNotTrusted, r.Builder)
	}
	return nil
}
