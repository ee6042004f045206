package config

// Tenants on one host: each server.connections entry may carry its own
// provenix: block, laid over the top-level one,
//
//	provenix:                 # what every connection starts from
//	  nats_url: nats://nats.example:4222
//	server:
//	  connections:
//	    forge-a:
//	      url: ...
//	      provenix:
//	        tenant: alice
//	        nats_nkey: /etc/provenix/alice/runner.nk
//	        key: /etc/provenix/alice/builder.key
//	        job_users: ["provenix-a-{0..3}"]
//
// A key the block gives replaces the top-level one; keys that only make
// sense together are replaced together (job_user with job_users; the
// NATS credentials nats_creds, nats_nkey and nats_token_file; nats_cert
// with nats_key), so a block naming its own NKey does not also inherit a
// creds file. volunteer is off in a block unless it says so: a tenant's
// machine time is not given to a farm because the top level volunteers.
//
// Connections serving different tenants must not share anything a job or
// a builder of one could use against the other: a job user (its
// leftovers are killed by uid and it could read the other's job
// directories), the signing key file, or NATS credentials. Load refuses
// such a file, naming both connections.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"gopkg.in/yaml.v3"
)

// ErrTenantsShare: two connections of different tenants share a job user,
// a signing key or NATS credentials.
var ErrTenantsShare = errors.New("connections of different tenants share")

// replacedTogether are keys a block replaces as one.
var replacedTogether = [][]string{
	{"job_user", "job_users"},
	{"nats_creds", "nats_nkey", "nats_token_file"},
	{"nats_cert", "nats_key"},
}

// resolveTenants computes each connection's effective provenix settings
// and checks that tenants share nothing.
func (c *Config) resolveTenants() error {
	c.connProvenix = nil
	if len(c.Server.Connections) == 0 {
		return nil
	}
	c.connProvenix = map[string]Provenix{}
	names := slices.Sorted(maps.Keys(c.Server.Connections))
	for _, name := range names {
		p, err := c.overlay(name, c.Server.Connections[name].Provenix)
		if err != nil {
			return err
		}
		c.connProvenix[name] = p
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			if err := checkApart(a, c.connProvenix[a], b, c.connProvenix[b]); err != nil {
				return err
			}
		}
	}
	return nil
}

// overlay lays connection name's provenix block n over the top level.
func (c *Config) overlay(name string, n yaml.Node) (Provenix, error) {
	p := c.Provenix
	p.JobUsers = slices.Clone(p.JobUsers)
	if isEmpty(&n) {
		return p, nil
	}
	where := "server.connections." + name + ".provenix"
	if n.Kind != yaml.MappingNode {
		return p, fmt.Errorf("%w: %s: line %d: not a mapping", ErrConfig, where, n.Line)
	}
	given := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		given[n.Content[i].Value] = true
	}
	for _, k := range []string{"no_cgroup", "no_private_tmp"} {
		if given[k] {
			return p, fmt.Errorf("%w: %s.%s is host-wide: set it in the top-level provenix block", ErrConfig, where, k)
		}
	}
	p.Volunteer = false
	for _, group := range replacedTogether {
		if slices.ContainsFunc(group, func(k string) bool { return given[k] }) {
			clearKeys(&p, group)
		}
	}
	// Decoded strictly, as the file is: a misspelt key here would
	// otherwise run a tenant's jobs with the top level's settings.
	raw, err := yaml.Marshal(&n)
	if err != nil {
		return p, fmt.Errorf("%w: %s: %w", ErrConfig, where, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) {
		return p, fmt.Errorf("%w: %s: %w", ErrConfig, where, err)
	}
	if err := p.normalize(where, c.Runner.Capacity); err != nil {
		return p, err
	}
	return p, nil
}

func clearKeys(p *Provenix, keys []string) {
	for _, k := range keys {
		switch k {
		case "job_user":
			p.JobUser = ""
		case "job_users":
			p.JobUsers = nil
		case "nats_creds":
			p.NATSCreds = ""
		case "nats_nkey":
			p.NATSNKey = ""
		case "nats_token_file":
			p.NATSTokenFile = ""
		case "nats_cert":
			p.NATSCert = ""
		case "nats_key":
			p.NATSKey = ""
		}
	}
}

// checkApart refuses two connections of different tenants that share a
// job user, a key file or NATS credentials. An empty key or no NATS
// credential at all means the data directory's, shared by both.
func checkApart(a string, pa Provenix, b string, pb Provenix) error {
	if pa.Tenant == pb.Tenant {
		return nil
	}
	fail := func(what, hint string) error {
		return fmt.Errorf("%w: %w: %s: server.connections %s (tenant %s) and %s (tenant %s); %s", ErrConfig, ErrTenantsShare, what, a, pa.Tenant, b, pb.Tenant, hint)
	}
	ua := pa.JobUserNames()
	for _, u := range pb.JobUserNames() {
		if slices.Contains(ua, u) {
			return fail("job user "+u, "give each tenant job users of its own (provenix.job_users in each connection's provenix block)")
		}
	}
	if samePath(pa.Key, pb.Key) {
		key := pa.Key
		if key == "" {
			key = "the data directory's builder key"
		}
		return fail("signing key "+key, "give each tenant a key of its own (provenix.key)")
	}
	ca, cb := pa.natsCredentials(), pb.natsCredentials()
	if len(ca) == 0 && len(cb) == 0 {
		return fail("NATS credentials (neither names any: both would use the data directory's token)", "give each tenant its account's credentials (provenix.nats_nkey or nats_creds)")
	}
	for _, x := range ca {
		for _, y := range cb {
			if samePath(x, y) {
				return fail("NATS credentials "+x, "give each tenant its account's credentials (provenix.nats_nkey or nats_creds)")
			}
		}
	}
	return nil
}

func samePath(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	return filepath.Clean(a) == filepath.Clean(b)
}

func (p Provenix) natsCredentials() []string {
	var out []string
	for _, f := range []string{p.NATSCreds, p.NATSNKey, p.NATSTokenFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// JobUserNames are the users p's jobs run as: job_users, else job_user.
func (p Provenix) JobUserNames() []string {
	if len(p.JobUsers) > 0 {
		return slices.Clone(p.JobUsers)
	}
	return []string{p.JobUser}
}

// ProvenixFor returns connection name's effective provenix settings: its
// own block laid over the top level's, or the top level's for a
// connection without one (or a .runner registration).
func (c *Config) ProvenixFor(name string) Provenix {
	if p, ok := c.connProvenix[name]; ok {
		return p
	}
	return c.Provenix
}

// BuilderIDFor is the builder id p records in provenance for a runner
// registered as runnerName: p.BuilderID, else "forgejo-runner:<name>".
func (p Provenix) BuilderIDFor(runnerName string) string {
	if p.BuilderID != "" {
		return p.BuilderID
	}
	return "forgejo-runner:" + runnerName
}

// ConnectionWorkdir is the parent of connection name's job directories:
// <host.workdir_parent>/<name> with server.connections (each connection
// its own, which the runner closes to the other tenants' job users), or
// host.workdir_parent itself for a .runner registration, as before.
func (c *Config) ConnectionWorkdir(dataDir, name string) (string, error) {
	base, err := c.WorkdirParent(dataDir)
	if err != nil {
		return "", err
	}
	if len(c.Server.Connections) == 0 {
		return base, nil
	}
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("%w: server.connections.%s: the name must be usable as a directory name", ErrConfig, name)
	}
	return filepath.Join(base, name), nil
}

// CheckTenantSecrets refuses, when the connections serve more than one
// tenant, a signing key or NATS credential file of any of them that
// anyone but its owner may read: one tenant's job could then publish
// into, or sign for, another tenant. (The key is checked again when it is
// loaded; a single tenant keeps the older, laxer rule for NATS files.)
// It reads only the files' modes.
func (c *Config) CheckTenantSecrets() error {
	tenants := map[string]bool{}
	for name := range c.Server.Connections {
		tenants[c.ProvenixFor(name).Tenant] = true
	}
	if len(tenants) < 2 {
		return nil
	}
	names := slices.Sorted(maps.Keys(c.Server.Connections))
	for _, name := range names {
		p := c.ProvenixFor(name)
		for _, f := range append(p.natsCredentials(), p.Key, p.NATSKey) {
			if f == "" {
				continue
			}
			fi, err := os.Stat(f)
			if err != nil {
				return fmt.Errorf("%w: server.connections.%s: %w", ErrConfig, name, err)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				return fmt.Errorf("%w: server.connections.%s (tenant %s): %s is mode %v, readable by others: another tenant's job could use it; chmod 600 it", ErrConfig, name, p.Tenant, f, fi.Mode().Perm())
			}
		}
	}
	return nil
}
