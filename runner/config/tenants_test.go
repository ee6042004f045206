package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const tenantsBase = `runner:
  capacity: 2
  labels: [nix]
provenix:
  nats_url: nats://nats.example:4222
  nats_creds: /etc/provenix/shared.creds
  key: /etc/provenix/shared.key
  volunteer: true
  owner: host-owner
  job_users: ["provenix-job-{0..1}"]
server:
  connections:
`

func conn(name, block string) string {
	s := "    " + name + ":\n      url: https://" + name + ".example/\n      uuid: u-" + name + "\n      token: t-" + name + "\n"
	if block != "" {
		s += "      provenix:\n"
		for _, l := range strings.Split(strings.TrimSpace(block), "\n") {
			s += "        " + l + "\n"
		}
	}
	return s
}

// A connection's provenix block is laid over the top level: keys it
// gives replace theirs (credentials and job users as a group), the rest
// is inherited, volunteer is off unless the block says so; a connection
// without a block has the top level's settings.
func TestConnectionProvenixOverlay(t *testing.T) {
	c, err := Parse([]byte(tenantsBase +
		conn("alice", "tenant: alice\nnats_nkey: /etc/provenix/alice.nk\nkey: /etc/provenix/alice.key\njob_users: [\"alice-{0..1}\"]\nbuilder_id: runner-alice") +
		conn("bob", "tenant: bob\nnats_creds: /etc/provenix/bob.creds\nkey: /etc/provenix/bob.key\njob_user: bob-jobs\nvolunteer: true") +
		conn("plain", "")))
	if err != nil {
		t.Fatal(err)
	}
	a := c.ProvenixFor("alice")
	want := c.Provenix
	want.Tenant, want.NATSCreds, want.NATSNKey, want.Key = "alice", "", "/etc/provenix/alice.nk", "/etc/provenix/alice.key"
	want.JobUsers, want.Volunteer, want.BuilderID = []string{"alice-0", "alice-1"}, false, "runner-alice"
	if !reflect.DeepEqual(a, want) {
		t.Errorf("alice\n got %+v\nwant %+v", a, want)
	}
	b := c.ProvenixFor("bob")
	if b.Tenant != "bob" || b.NATSCreds != "/etc/provenix/bob.creds" || b.NATSURL != "nats://nats.example:4222" || b.Owner != "host-owner" {
		t.Errorf("bob %+v", b)
	}
	if len(b.JobUsers) != 0 || b.JobUser != "bob-jobs" || !reflect.DeepEqual(b.JobUserNames(), []string{"bob-jobs"}) {
		t.Errorf("bob's job_user must replace the top level's job_users: %+v", b)
	}
	if !b.Volunteer {
		t.Error("bob's block volunteers")
	}
	if p := c.ProvenixFor("plain"); !reflect.DeepEqual(p, c.Provenix) {
		t.Errorf("a connection without a block: %+v, want the top level's", p)
	}
	if c.Provenix.Tenant != DefaultTenant || !c.Provenix.Volunteer {
		t.Errorf("the top level changed: %+v", c.Provenix)
	}
	if id := a.BuilderIDFor("alice"); id != "runner-alice" {
		t.Errorf("builder id %q", id)
	}
	if id := c.ProvenixFor("plain").BuilderIDFor("plain"); id != "forgejo-runner:plain" {
		t.Errorf("builder id %q", id)
	}
	wd, err := c.ConnectionWorkdir("/var/lib/provenix", "alice")
	if err != nil || wd != "/var/lib/provenix/runner/work/alice" {
		t.Errorf("work directory %q, %v", wd, err)
	}
}

// Connections of different tenants sharing a job user, the key or NATS
// credentials are a clear error naming both; the same tenant may share.
func TestTenantsShareRefused(t *testing.T) {
	aliceOK := "tenant: alice\nnats_nkey: /a.nk\nkey: /a.key\njob_users: [\"provenix-job-{8..9}\"]"
	for _, tc := range []struct {
		name, a, b, want string
	}{
		{"job user", aliceOK, "tenant: bob\nnats_nkey: /b.nk\nkey: /b.key\njob_users: [\"provenix-job-{9..10}\"]", "job user provenix-job-9"},
		{"job user inherited", aliceOK, "tenant: bob\nnats_nkey: /b.nk\nkey: /b.key\njob_user: provenix-job-8", "job user provenix-job-8"},
		{"key", aliceOK, "tenant: bob\nnats_nkey: /b.nk\nkey: /a.key\njob_users: [b0, b1]", "signing key /a.key"},
		{"default key", "tenant: alice\nnats_nkey: /a.nk\njob_users: [a0, a1]\nkey: ''", "tenant: bob\nnats_nkey: /b.nk\njob_users: [b0, b1]\nkey: ''", "data directory's builder key"},
		{"nats", aliceOK, "tenant: bob\nnats_creds: /a.nk\nkey: /b.key\njob_users: [b0, b1]", "NATS credentials /a.nk"},
		{"top level's nats", "tenant: alice\nkey: /a.key\njob_users: [a0, a1]", "tenant: bob\nkey: /b.key\njob_users: [b0, b1]", "NATS credentials /etc/provenix/shared.creds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tenantsBase + conn("forge-a", tc.a) + conn("forge-b", tc.b)))
			if !errors.Is(err, ErrTenantsShare) || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "forge-a (tenant alice)") || !strings.Contains(err.Error(), "forge-b (tenant bob)") {
				t.Errorf("err %v, want %v naming %q and both connections", err, ErrTenantsShare, tc.want)
			}
		})
	}
	// One tenant on two forges may share everything.
	if _, err := Parse([]byte(tenantsBase + conn("forge-a", aliceOK) + conn("forge-b", aliceOK))); err != nil {
		t.Errorf("one tenant on two forges: %v", err)
	}
}

// A block is read as strictly as the file, and checked like the top level.
func TestConnectionProvenixInvalid(t *testing.T) {
	for _, tc := range []struct{ name, block, want string }{
		{"unknown key", "tenant: alice\nnats_nkye: /a.nk", "nats_nkye"},
		{"tenant", "tenant: a.b", "server.connections.x.provenix.tenant"},
		{"pool too small", "job_users: [only-one]", "server.connections.x.provenix.job_users"},
		{"host-wide", "no_cgroup: true", "host-wide"},
		{"not a mapping", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := tenantsBase + conn("x", tc.block)
			if tc.name == "not a mapping" {
				doc = tenantsBase + conn("x", "") + "      provenix: [1]\n"
				tc.want = "not a mapping"
			}
			_, err := Parse([]byte(doc))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// Registering a connection again keeps its provenix block.
func TestSetConnectionKeepsProvenix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(tenantsBase+conn("alice", "tenant: alice\nnats_nkey: /a.nk\nkey: /a.key")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := SetConnection(path, "alice", Connection{URL: "https://alice.example/", UUID: "u2", Token: "t2"}, true); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ProvenixFor("alice"); p.Tenant != "alice" || p.NATSNKey != "/a.nk" || c.Server.Connections["alice"].UUID != "u2" {
		t.Errorf("after re-registration: uuid %s, provenix %+v", c.Server.Connections["alice"].UUID, p)
	}
}

// With several tenants, a key or NATS credential file others may read is
// refused, naming it; one tenant alone is not checked.
func TestCheckTenantSecrets(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("secret"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	aKey, aNK := file("a.key", 0o600), file("a.nk", 0o600)
	bKey, bNK := file("b.key", 0o600), file("b.nk", 0o644)
	block := func(tenant, nk, key, users string) string {
		return "tenant: " + tenant + "\nnats_nkey: " + nk + "\nkey: " + key + "\njob_users: [" + users + "]"
	}
	c, err := Parse([]byte(tenantsBase + conn("forge-a", block("alice", aNK, aKey, "a0, a1")) + conn("forge-b", block("bob", bNK, bKey, "b0, b1"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckTenantSecrets(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bNK) || !strings.Contains(err.Error(), "tenant bob") {
		t.Errorf("b's NATS seed readable by others: err %v", err)
	}
	if err := os.Chmod(bNK, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckTenantSecrets(); err != nil {
		t.Errorf("every file 0600: %v", err)
	}
	one, err := Parse([]byte(tenantsBase + conn("forge-a", block("alice", file("c.nk", 0o644), aKey, "a0, a1"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := one.CheckTenantSecrets(); err != nil {
		t.Errorf("one tenant: %v", err)
	}
}
