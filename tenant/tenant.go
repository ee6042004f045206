// Package tenant creates what an operator installs for one tenant of a
// shared Provenix: a NATS account (its own JetStream, under limits) with
// least-privilege NKey users for its runners, its pusher and its admin; the
// pusher's policy and cache signing key; a builder key the policy trusts;
// and the credentials that let the tenant's Nix clients, and nobody else,
// read its cache. See docs/tenants.md.
package tenant

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/queue"
)

// ErrInvalidName: a tenant name is not usable as a NATS account, subject
// token, file name and cache key name at once.
var ErrInvalidName = errors.New("tenant: invalid name")

// Limits are the account's JetStream limits, nats-server's names in
// parentheses. Zero means the default; -1 unlimited.
type Limits struct {
	// MaxFile bounds the account's disk use in bytes (max_file): results,
	// events, staged NARs and votes together.
	MaxFile int64
	// MaxMem bounds memory storage in bytes (max_mem). Provenix keeps
	// nothing in memory streams.
	MaxMem int64
	// MaxStreams (max_streams): Provenix needs eleven.
	MaxStreams int
	// MaxConsumers per stream (max_consumers): pusher groups and
	// volunteers' systems, plus the short-lived readers of NARs and votes.
	MaxConsumers int
}

// Defaults of Limits.
const (
	DefaultMaxFile      = 10 << 30
	DefaultMaxMem       = 0
	DefaultMaxStreams   = 12
	DefaultMaxConsumers = 256
	// streamsNeeded is what EnsureStreams creates (RESULTS, EVENTS,
	// REBUILD, the staging Object Store and three KV buckets: votes,
	// builders, waiting entries) and EnsureFarm (FARM, FARM_REPORTS and
	// the farm's bucket), and USAGE.
	streamsNeeded = 11
)

func (l *Limits) fill() error {
	if l.MaxFile == 0 {
		l.MaxFile = DefaultMaxFile
	}
	if l.MaxMem == 0 {
		l.MaxMem = DefaultMaxMem
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	if l.MaxConsumers == 0 {
		l.MaxConsumers = DefaultMaxConsumers
	}
	switch {
	case l.MaxFile < -1 || l.MaxMem < -1 || l.MaxStreams < -1 || l.MaxConsumers < -1:
		return errors.New("tenant: limits below -1 (unlimited)")
	case l.MaxStreams != -1 && l.MaxStreams < streamsNeeded:
		return fmt.Errorf("tenant: max streams %d: Provenix needs %d", l.MaxStreams, streamsNeeded)
	}
	return nil
}

// Options configure Add.
type Options struct {
	// Name of the tenant: its NATS account, subject token, cache key name.
	Name string
	// Dir receives the tenant's files; it must not hold any of them yet.
	Dir    string
	Limits Limits
	// CacheHost is the host name the tenant's Nix clients reach the
	// tenant's cache at, for the netrc file; "localhost" when empty.
	CacheHost string
	// BuilderID is the builder id the generated builder key may claim;
	// NAME-runner when empty.
	BuilderID string
}

// File names inside a tenant's directory.
const (
	FileAccount    = "account.conf"
	FilePolicy     = "policy.yaml"
	FileCacheKey   = "cache.key"
	FileBuilderKey = "builder.key"
	// FileVSAKey signs the tenant pusher's verification summaries.
	FileVSAKey       = "vsa.key"
	FileCacheReaders = "cache-readers"
	FileNetrc        = "netrc"
)

// SeedFile is the name of role's NKey seed file.
func SeedFile(role queue.Role) string { return string(role) + ".nk" }

// Tenant is what Add created.
type Tenant struct {
	Name      string
	Dir       string
	Limits    Limits
	BuilderID string
	// Users are the NKey public keys (U...) by role.
	Users map[queue.Role]string
	// Snippet is the account block (the content of account.conf).
	Snippet string
	// CachePublicKey is the cache key's public half ("name:base64"), for
	// the clients' trusted-public-keys.
	CachePublicKey string
}

// Path is the path of the tenant's file name.
func (t *Tenant) Path(name string) string { return filepath.Join(t.Dir, name) }

// ValidName accepts 1 to 64 characters of [a-z0-9_-], starting with a
// letter or digit: safe unquoted in a NATS configuration, as a subject
// token, a file name and inside a Nix key name.
func ValidName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%w: %q: want 1 to 64 characters", ErrInvalidName, name)
	}
	for i, r := range name {
		ok := ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || (i > 0 && (r == '-' || r == '_'))
		if !ok {
			return fmt.Errorf("%w: %q: only a-z, 0-9, '-' and '_' (not first) are allowed", ErrInvalidName, name)
		}
	}
	return nil
}

// Add creates the tenant's files in o.Dir (0700): one NKey seed per role
// (0600), account.conf, cache.key(.pub), builder.key(.pub), vsa.key(.pub), policy.yaml
// trusting that builder for this tenant, cache-readers (for the cache
// server) and netrc (for the tenant's Nix clients). It never overwrites a
// file: on any failure it removes what it created.
func Add(o Options) (t *Tenant, err error) {
	if err := ValidName(o.Name); err != nil {
		return nil, err
	}
	if o.Dir == "" {
		return nil, errors.New("tenant: no directory")
	}
	if err := o.Limits.fill(); err != nil {
		return nil, err
	}
	if o.CacheHost == "" {
		o.CacheHost = "localhost"
	}
	if strings.ContainsAny(o.CacheHost, " \t\n#") {
		return nil, fmt.Errorf("tenant: cache host %q", o.CacheHost)
	}
	if o.BuilderID == "" {
		o.BuilderID = o.Name + "-runner"
	}
	// Before any file is written: a builder id the runner user cannot
	// have (the submitter's staging scope).
	if _, err := queue.RunnerPermissions(o.Name, o.BuilderID); err != nil {
		return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
	}
	t = &Tenant{Name: o.Name, Dir: o.Dir, Limits: o.Limits, BuilderID: o.BuilderID, Users: map[queue.Role]string{}}
	var created []string
	defer func() {
		if err != nil {
			for _, f := range created {
				os.Remove(f)
			}
		}
	}()
	write := func(name string, data []byte, perm os.FileMode) error {
		p := t.Path(name)
		if err := attest.WriteNewFile(p, data, perm); err != nil {
			return fmt.Errorf("tenant %s: %w", o.Name, err)
		}
		created = append(created, p)
		return nil
	}
	// Refuse before creating anything when any file is there already.
	for _, name := range allFiles() {
		if _, err := os.Lstat(t.Path(name)); err == nil {
			return nil, fmt.Errorf("tenant %s: %s already exists; refusing to overwrite it", o.Name, t.Path(name))
		}
	}

	for _, role := range queue.Roles {
		seed, pub, err := newUser()
		if err != nil {
			return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
		}
		if err := write(SeedFile(role), append(seed, '\n'), 0o600); err != nil {
			return nil, err
		}
		t.Users[role] = pub
	}
	if t.Snippet, err = AccountSnippet(o.Name, o.Limits, t.Users, t.BuilderID); err != nil {
		return nil, err
	}
	if err := write(FileAccount, []byte(t.Snippet), 0o644); err != nil {
		return nil, err
	}

	created = append(created, t.Path(FileCacheKey), t.Path(FileCacheKey)+".pub")
	pk, err := cachepush.GenerateKeyFiles("provenix-"+o.Name+"-1", t.Path(FileCacheKey))
	if err != nil {
		return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
	}
	t.CachePublicKey = pk.String()
	created = append(created, t.Path(FileBuilderKey), t.Path(FileBuilderKey)+".pub")
	if _, err := attest.GenerateKeyFiles(t.Path(FileBuilderKey)); err != nil {
		return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
	}
	created = append(created, t.Path(FileVSAKey), t.Path(FileVSAKey)+".pub")
	if _, err := attest.GenerateKeyFiles(t.Path(FileVSAKey)); err != nil {
		return nil, fmt.Errorf("tenant %s: %w", o.Name, err)
	}
	if err := write(FilePolicy, []byte(policyFor(o.Name, o.BuilderID)), 0o644); err != nil {
		return nil, err
	}

	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	password := hex.EncodeToString(secret)
	if err := write(FileCacheReaders, []byte(server.ReaderLine(o.Name, password)+"\n"), 0o600); err != nil {
		return nil, err
	}
	netrc := fmt.Sprintf("machine %s login %s password %s\n", o.CacheHost, o.Name, password)
	if err := write(FileNetrc, []byte(netrc), 0o600); err != nil {
		return nil, err
	}
	return t, nil
}

// newUser makes an NKey user: its seed and public key.
func newUser() (seed []byte, pub string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, "", fmt.Errorf("nkey: %w", err)
	}
	if seed, err = kp.Seed(); err != nil {
		return nil, "", fmt.Errorf("nkey: %w", err)
	}
	if pub, err = kp.PublicKey(); err != nil {
		return nil, "", fmt.Errorf("nkey: %w", err)
	}
	return seed, pub, nil
}

func allFiles() []string {
	names := []string{FileAccount, FilePolicy, FileCacheKey, FileCacheKey + ".pub", FileBuilderKey, FileBuilderKey + ".pub",
		FileVSAKey, FileVSAKey + ".pub", FileCacheReaders, FileNetrc}
	for _, r := range queue.Roles {
		names = append(names, SeedFile(r))
	}
	return names
}

// policyFor is a default-deny policy for the tenant's pusher: its tenant
// only, its own builder key.
func policyFor(name, builderID string) string {
	return fmt.Sprintf(`# Provenix cache policy of tenant %[1]s (provenix tenant add).
# Anything not allowed here is refused; see 'provenix up' for every rule.
tenants: [%[1]s]
systems: [x86_64-linux, aarch64-linux, x86_64-darwin, aarch64-darwin]
builders:
  - id: %[2]s
    key: %[3]s.pub
`, name, strconv.Quote(builderID), FileBuilderKey)
}

// AccountSnippet is the nats-server configuration block of the tenant's
// account, to be included inside the server's `accounts { }` block.
func AccountSnippet(name string, l Limits, users map[queue.Role]string, builderID string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := l.fill(); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Provenix tenant %q: include inside the server's accounts { } block.\n", name)
	fmt.Fprintf(&b, "%s: {\n", name)
	fmt.Fprintf(&b, "  jetstream: {max_file: %d, max_mem: %d, max_streams: %d, max_consumers: %d}\n",
		l.MaxFile, l.MaxMem, l.MaxStreams, l.MaxConsumers)
	b.WriteString("  users: [\n")
	for _, role := range queue.Roles {
		pub, ok := users[role]
		if !ok {
			continue
		}
		if !nkeys.IsValidPublicUserKey(pub) {
			return "", fmt.Errorf("tenant %s: %s: %q is not an NKey user public key", name, role, pub)
		}
		perms, err := permsOf(name, role, builderID)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "    # %s\n    {nkey: %s, permissions: {\n", role, pub)
		fmt.Fprintf(&b, "      publish: {allow: %s}\n", confList(perms.Publish))
		fmt.Fprintf(&b, "      subscribe: {allow: %s}\n", confList(perms.Subscribe))
		b.WriteString("    }}\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// confList writes subjects as a NATS configuration list of quoted strings
// ('$' and '>' would otherwise be read as variables or operators).
func confList(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
