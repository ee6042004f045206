package tenant

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/conf"
	"github.com/nats-io/nkeys"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/internal/atomicfile"
	"codeberg.org/provenix/provenix/queue"
)

// ErrNotUpgradable: a tenant directory's account.conf cannot be rewritten
// without losing something (a user no seed names, a seed no user has, an
// unknown builder id); nothing was written.
var ErrNotUpgradable = errors.New("tenant: cannot upgrade")

// UpgradeOptions configure Upgrade.
type UpgradeOptions struct {
	// Dir is the tenant's directory, as Add made it.
	Dir string
	// Name, when set, is the tenant the directory must hold.
	Name string
	// BuilderID is the runner user's builder id; when empty, the one
	// the current account.conf stages for, among NAME-runner and the
	// builders of the directory's policy.yaml.
	BuilderID string
	// DryRun reports what would change and writes nothing.
	DryRun bool
	// Now names the backup of the replaced file; time.Now when zero.
	Now time.Time
}

// Upgraded is what Upgrade found and did.
type Upgraded struct {
	Tenant *Tenant
	// Old is the account.conf found; Tenant.Snippet is what this version
	// writes for the same users, limits and builder id.
	Old string
	// Changed is whether the two differ; Changes says how, per role.
	Changed bool
	Changes []RoleChange
	// NewSeeds are the roles this version has and the directory had no
	// seed for (a tenant older than the role): Upgrade created them,
	// unless DryRun.
	NewSeeds []queue.Role
	// Raised are the limits raised to what this version needs.
	Raised []string
	// TakenUp are the newer roles whose seed an upgrade cut short left
	// without its user: their user is added with that seed.
	TakenUp []queue.Role
	// Backup is where the replaced account.conf was kept ("" when
	// nothing was written).
	Backup string
}

// RoleChange is how one role's permissions change.
type RoleChange struct {
	Role queue.Role
	// New is true for a role the old account.conf had no user for.
	New bool
	// Added and Removed are publish and subscribe subjects ("pub S",
	// "sub S").
	Added, Removed []string
}

// Upgrade rewrites the account.conf of the tenant in o.Dir with this
// version's permissions for its roles, keeping its users' NKeys (the
// seeds in the directory), its JetStream limits and its runner's builder
// id: a tenant made by an older version otherwise lacks rights this
// version's runners, pushers or submitters use (docs/tenants.md). Every
// allow list becomes this version's: rights added to the file by hand
// are dropped (Upgraded.Changes lists them; DryRun first). A role newer
// than the tenant (the submitter) gets a seed and a user; another role
// with neither seed nor user stays absent. Limits below what this
// version needs are raised. The old file is kept beside the new one
// (Upgraded.Backup), and the new one replaces it atomically; reload
// nats-server afterwards. Upgrade refuses (ErrNotUpgradable), writing
// nothing, rather than drop a user, misread a setting or move a key to
// another role.
func Upgrade(o UpgradeOptions) (*Upgraded, error) {
	if o.Dir == "" {
		return nil, errors.New("tenant: no directory")
	}
	path := filepath.Join(o.Dir, FileAccount)
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tenant: %w", err)
	}
	acct, err := parseAccount(string(old))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotUpgradable, path, err)
	}
	if o.Name != "" && acct.name != o.Name {
		return nil, fmt.Errorf("%w: %s holds tenant %s, not %s", ErrNotUpgradable, path, acct.name, o.Name)
	}
	t := &Tenant{Name: acct.name, Dir: o.Dir, Limits: acct.limits, Users: map[queue.Role]string{}}
	up := &Upgraded{Tenant: t, Old: string(old)}

	// Each user of the file must be a seed's, and each seed a user's,
	// but for a role newer than the tenant.
	byKey := map[string]queue.Role{}
	newSeeds := map[queue.Role][]byte{}
	for _, role := range queue.Roles {
		seed, err := os.ReadFile(filepath.Join(o.Dir, SeedFile(role)))
		switch {
		case errors.Is(err, fs.ErrNotExist) && slices.Contains(newerRoles, role):
			if seed, _, err = newUser(); err != nil {
				return nil, fmt.Errorf("tenant %s: %w", t.Name, err)
			}
			newSeeds[role] = seed
			up.NewSeeds = append(up.NewSeeds, role)
		case errors.Is(err, fs.ErrNotExist):
			// Left out on purpose (an operator who keeps no admin key
			// there), or lost while its user is in the file, which
			// shows below as a user no seed names.
			continue
		case err != nil:
			return nil, fmt.Errorf("tenant: %w", err)
		}
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotUpgradable, SeedFile(role), err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, err
		}
		if other, dup := byKey[pub]; dup {
			// nats-server refuses an account with one key twice.
			return nil, fmt.Errorf("%w: %s holds the key of %s", ErrNotUpgradable, SeedFile(role), SeedFile(other))
		}
		was, ok := acct.users[pub]
		if !ok && newSeeds[role] == nil {
			if !slices.Contains(newerRoles, role) {
				return nil, fmt.Errorf("%w: %s's user %s is not in account.conf (a seed rotated without its nkey line?)", ErrNotUpgradable, SeedFile(role), pub)
			}
			// A newer role's seed without its user: made by an upgrade
			// that stopped before account.conf was replaced, so newer
			// than the file; an older one was left when its user was
			// removed (a revoked key), and must not come back.
			if err := newerThan(filepath.Join(o.Dir, SeedFile(role)), path); err != nil {
				return nil, fmt.Errorf("%w: %s's user %s is not in account.conf, and the seed is %w (a revoked key? remove the seed for a new one)", ErrNotUpgradable, SeedFile(role), pub, err)
			}
			up.TakenUp = append(up.TakenUp, role)
		}
		if ok {
			// A seed file holding another role's key would give that
			// key this role's rights.
			if like := likeliestRole(t.Name, was); like != role {
				return nil, fmt.Errorf("%w: %s's user %s has rights like the %s role's in account.conf (seed files swapped?)", ErrNotUpgradable, SeedFile(role), pub, like)
			}
		}
		t.Users[role] = pub
		byKey[pub] = role
	}
	for pub := range acct.users {
		if _, ok := byKey[pub]; !ok {
			return nil, fmt.Errorf("%w: account.conf has a user %s that no seed in %s names; upgrading would drop it", ErrNotUpgradable, pub, o.Dir)
		}
	}

	runnerOld := acct.users[t.Users[queue.RoleRunner]]
	if t.BuilderID, err = builderOf(t.Name, o, runnerOld); err != nil {
		return nil, err
	}
	if t.Limits.MaxStreams != -1 && t.Limits.MaxStreams < streamsNeeded {
		// Older versions needed fewer streams.
		up.Raised = append(up.Raised, fmt.Sprintf("max_streams %d -> %d (Provenix needs %d)", t.Limits.MaxStreams, streamsNeeded, streamsNeeded))
		t.Limits.MaxStreams = streamsNeeded
	}
	if filled := t.Limits; filled.fill() != nil || filled != t.Limits {
		// Every value was read as written; fill would change one only
		// if parseAccount let a value through that it should not.
		return nil, fmt.Errorf("%w: jetstream limits %+v: not as provenix writes them", ErrNotUpgradable, t.Limits)
	}
	if t.Snippet, err = AccountSnippet(t.Name, t.Limits, t.Users, t.BuilderID); err != nil {
		return nil, err
	}
	for _, role := range queue.Roles {
		if _, ok := t.Users[role]; !ok {
			continue
		}
		perms, err := permsOf(t.Name, role, t.BuilderID)
		if err != nil {
			return nil, err
		}
		was, had := acct.users[t.Users[role]]
		c := RoleChange{Role: role, New: !had}
		c.Added, c.Removed = subjectDiff(was, perms)
		if c.New || len(c.Added)+len(c.Removed) > 0 {
			up.Changes = append(up.Changes, c)
		}
	}
	// Decided on what the server reads, not on the text: a file that
	// differs in its comments or layout only is current.
	up.Changed = len(up.Changes) > 0 || len(up.Raised) > 0
	if o.DryRun || !up.Changed {
		return up, nil
	}

	// Nothing written is removed on a failure: the backup is the old
	// file, and a new role's seed left without its user is taken up by
	// the next run.
	for _, role := range up.NewSeeds {
		p := filepath.Join(o.Dir, SeedFile(role))
		if err := attest.WriteNewFile(p, append(newSeeds[role], '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("tenant %s: %w", t.Name, err)
		}
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	up.Backup = path + "." + now.UTC().Format("20060102T150405Z")
	if err := attest.WriteNewFile(up.Backup, old, 0o644); err != nil {
		return nil, fmt.Errorf("tenant %s: keep the old account.conf: %w", t.Name, err)
	}
	if err := atomicfile.WriteFile(path, []byte(t.Snippet), 0o644); err != nil {
		return nil, fmt.Errorf("tenant %s: %w (the old file is kept as %s)", t.Name, err, up.Backup)
	}
	return up, nil
}

// newerThan is nil unless the file at p was modified before the one at
// than.
func newerThan(p, than string) error {
	a, err := os.Stat(p)
	if err != nil {
		return err
	}
	b, err := os.Stat(than)
	if err != nil {
		return err
	}
	if a.ModTime().Before(b.ModTime()) {
		return fmt.Errorf("older than %s", filepath.Base(than))
	}
	return nil
}

// likeliestRole is the role whose rights in this version old's are most
// like (by the share of rights in common): a user keeps most of its
// role's rights from version to version, and the roles share few.
func likeliestRole(name string, old *userPerms) queue.Role {
	was := old.rights()
	best, bestScore := queue.Role(""), -1.0
	for _, role := range queue.Roles {
		perms, err := permsOf(name, role, name+"-runner")
		if err != nil {
			continue
		}
		now := rightsOf(perms.Publish, perms.Subscribe)
		common := 0
		for k := range was {
			if now[k] {
				common++
			}
		}
		score := float64(common) / float64(len(was)+len(now)-common)
		if score > bestScore {
			best, bestScore = role, score
		}
	}
	return best
}

// rightsOf are a user's rights as "pub S" and "sub S", the form
// Upgraded.Changes reports them in.
func rightsOf(publish, subscribe []string) map[string]bool {
	m := map[string]bool{}
	for _, s := range publish {
		m["pub "+s] = true
	}
	for _, s := range subscribe {
		m["sub "+s] = true
	}
	return m
}

// newerRoles are the roles a tenant made by an older version may lack:
// Upgrade gives them a seed and a user.
var newerRoles = []queue.Role{queue.RoleSubmitter}

// builderOf is the runner's builder id: o.BuilderID, or the candidate
// whose staging scope the old runner user writes. Either must be the one
// the old user stages for, so the upgrade never moves a runner's scope.
func builderOf(name string, o UpgradeOptions, old *userPerms) (string, error) {
	if old == nil {
		// No runner user, none is made: the id only says so.
		return "", nil
	}
	stages := func(id string) bool {
		scope := "." + queue.StagingScope(id) + "."
		for _, s := range old.publish {
			if strings.Contains(s, scope) {
				return true
			}
		}
		return false
	}
	if o.BuilderID != "" {
		// A runner made before staging was scoped stages anywhere: any
		// builder id narrows it.
		if !stages(o.BuilderID) && !slices.Contains(old.publish, unscopedStaging) {
			return "", fmt.Errorf("%w: account.conf's runner user does not stage for builder id %q", ErrNotUpgradable, o.BuilderID)
		}
		return o.BuilderID, nil
	}
	candidates := []string{name + "-runner"}
	if p, err := policy.Load(filepath.Join(o.Dir, FilePolicy)); err == nil {
		// Only a hint: a policy that does not load names no one.
		candidates = append(candidates, p.BuilderIDs()...)
	}
	for _, id := range candidates {
		if stages(id) {
			return id, nil
		}
	}
	if slices.Contains(old.publish, unscopedStaging) {
		return "", fmt.Errorf("%w: account.conf's runner user is older than builder ids in staging: give the builder id its runners sign as (--builder-id)", ErrNotUpgradable)
	}
	return "", fmt.Errorf("%w: account.conf's runner user stages for none of %s; give the builder id it stages for (--builder-id)", ErrNotUpgradable,
		strings.Join(candidates, ", "))
}

// unscopedStaging is the staging right of runners made before staging
// was scoped by builder id.
const unscopedStaging = "$O.STAGING.C.>"

func permsOf(name string, role queue.Role, builderID string) (queue.Permissions, error) {
	if role == queue.RoleRunner {
		return queue.RunnerPermissions(name, builderID)
	}
	return queue.RolePermissions(name, role)
}

func subjectDiff(was *userPerms, now queue.Permissions) (added, removed []string) {
	before, after := was.rights(), rightsOf(now.Publish, now.Subscribe)
	for r := range after {
		if !before[r] {
			added = append(added, r)
		}
	}
	for r := range before {
		if !after[r] {
			removed = append(removed, r)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

// account is what parseAccount read of an account.conf.
type account struct {
	name   string
	limits Limits
	// users by NKey; the role comment of the file is not trusted.
	users map[string]*userPerms
}

type userPerms struct{ publish, subscribe []string }

// rights are p's rights as rightsOf gives them; none for a user the old
// file did not have (nil).
func (p *userPerms) rights() map[string]bool {
	if p == nil {
		return map[string]bool{}
	}
	return rightsOf(p.publish, p.subscribe)
}

// parseAccount reads an account.conf as Add writes it, with nats-server's
// own configuration parser.
func parseAccount(text string) (*account, error) {
	m, err := conf.Parse(text)
	if err != nil {
		return nil, err
	}
	if len(m) != 1 {
		return nil, fmt.Errorf("want one account, found %d", len(m))
	}
	a := &account{users: map[string]*userPerms{}}
	var body map[string]any
	for k, v := range m {
		a.name = k
		var ok bool
		if body, ok = v.(map[string]any); !ok {
			return nil, fmt.Errorf("account %s is not a block", k)
		}
	}
	if err := ValidName(a.name); err != nil {
		return nil, err
	}
	if err := only(body, "account "+a.name, "jetstream", "users"); err != nil {
		return nil, err
	}
	js, ok := body["jetstream"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("account %s has no jetstream block", a.name)
	}
	if err := only(js, "jetstream", "max_file", "max_mem", "max_streams", "max_consumers"); err != nil {
		return nil, err
	}
	num := func(k string) (int64, error) {
		v, ok := js[k].(int64)
		if !ok {
			return 0, fmt.Errorf("jetstream %s: %v is not a number", k, js[k])
		}
		return v, nil
	}
	var streams, consumers int64
	if a.limits.MaxFile, err = num("max_file"); err == nil {
		if a.limits.MaxMem, err = num("max_mem"); err == nil {
			if streams, err = num("max_streams"); err == nil {
				consumers, err = num("max_consumers")
			}
		}
	}
	if err != nil {
		return nil, err
	}
	// nats-server reads 0 streams or consumers as no limit; Limits
	// spells that -1 (0 is the default there). A disk quota of 0 is
	// nothing Add writes.
	if streams == 0 {
		streams = -1
	}
	if consumers == 0 {
		consumers = -1
	}
	if a.limits.MaxFile == 0 {
		return nil, errors.New("jetstream max_file: 0, which provenix does not write")
	}
	a.limits.MaxStreams, a.limits.MaxConsumers = int(streams), int(consumers)
	users, ok := body["users"].([]any)
	if !ok {
		return nil, fmt.Errorf("account %s has no users list", a.name)
	}
	for i, u := range users {
		um, ok := u.(map[string]any)
		nkey, _ := um["nkey"].(string)
		if !ok || !nkeys.IsValidPublicUserKey(nkey) {
			return nil, fmt.Errorf("user %d has no NKey", i+1)
		}
		p := &userPerms{}
		if err := only(um, "user "+nkey, "nkey", "permissions"); err != nil {
			return nil, err
		}
		// Only the form Add writes: nats-server also reads others (a
		// list without allow, a string), which Upgrade would misread.
		perms, ok := um["permissions"].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("user %s: permissions not in the form provenix writes", nkey)
		}
		if err := only(perms, "user "+nkey+"'s permissions", "publish", "subscribe"); err != nil {
			return nil, err
		}
		for kind, dst := range map[string]*[]string{"publish": &p.publish, "subscribe": &p.subscribe} {
			block, ok := perms[kind].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("user %s: %s rights not in the form provenix writes ({allow: [...]})", nkey, kind)
			}
			if err := only(block, "user "+nkey+"'s "+kind, "allow"); err != nil {
				return nil, err
			}
			allow, ok := block["allow"].([]any)
			if !ok {
				return nil, fmt.Errorf("user %s: %s allow is not a list", nkey, kind)
			}
			for _, s := range allow {
				str, ok := s.(string)
				if !ok {
					return nil, fmt.Errorf("user %s: %s subject %v", nkey, kind, s)
				}
				*dst = append(*dst, str)
			}
		}
		a.users[nkey] = p
	}
	return a, nil
}

// only refuses settings Add does not write (an operator's own, such as
// imports or deny lists): rewriting the block would drop them.
func only(m map[string]any, what string, keys ...string) error {
	for k := range m {
		if !slices.Contains(keys, k) {
			return fmt.Errorf("%s has %q, which provenix does not write; it would be lost: edit the file by hand", what, k)
		}
	}
	return nil
}
