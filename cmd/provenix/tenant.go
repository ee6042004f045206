package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/tenant"
)

type tenantAddFlags struct {
	dir       string
	limits    tenant.Limits
	cacheHost string
	builderID string
}

func newTenantCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tenant", Short: "Tenants of a shared NATS server and cache"}
	f := &tenantAddFlags{}
	add := &cobra.Command{
		Use:   "add [flags] NAME",
		Short: "Create a tenant: NATS account snippet, NKey users, keys, policy, cache readers",
		Long: `Create the files an operator installs for tenant NAME (docs/tenants.md):

  account.conf        the tenant's NATS account: JetStream limits and one
                      least-privilege NKey user per role. Include it inside
                      the nats-server configuration's accounts { } block.
  runner.nk           NKey seed of the runners (build, volunteer): publish
                      the tenant's results, stage NARs, take its rebuilds,
                      hear of its disputes; as farm workers, take build
                      requests and claim them (claim records only: no
                      builder can cancel or stall another's build set).
  pusher.nk           NKey seed of the cache pusher: consume the tenant's
                      results, read staging and votes, publish events,
                      schedule the farm.
  submitter.nk        NKey seed for 'provenix submit' and 'provenix farm
                      cancel|status|list': write build sets, stage their
                      .drv closures (--builder-id NAME-submitter).
  admin.nk            NKey seed with every right inside the account only.
  builder.key(.pub)   a builder signing key, trusted by policy.yaml
  policy.yaml         the pusher's policy: this tenant, this builder
  cache.key(.pub)     the tenant's Nix cache signing key
  cache-readers       for 'provenix cache serve --readers': who may read
  netrc               for the tenant's Nix clients (netrc-file)

Each tenant has its own NATS account, hence its own JetStream: tenants
cannot see each other's results, staged NARs or votes, and one tenant
filling its quota does not stop the others. Seeds and keys are written
0600 and never overwritten.`,
		Example: `  provenix tenant add acme --dir /etc/provenix/tenants/acme \
      --max-file 50GiB --cache-host cache.example.org`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTenantAdd(g, f, args[0])
		},
	}
	fl := add.Flags()
	fl.StringVar(&f.dir, "dir", "", "directory for the tenant's files (default: the data directory's tenants/NAME)")
	fl.Var(byteSize{&f.limits.MaxFile}, "max-file", "JetStream disk quota in bytes (suffixes KiB, MiB, GiB, TiB; -1 unlimited)")
	fl.Var(byteSize{&f.limits.MaxMem}, "max-mem", "JetStream memory quota in bytes (Provenix uses none)")
	fl.IntVar(&f.limits.MaxStreams, "max-streams", tenant.DefaultMaxStreams, "JetStream streams (Provenix needs 11)")
	fl.IntVar(&f.limits.MaxConsumers, "max-consumers", tenant.DefaultMaxConsumers, "JetStream consumers per stream")
	fl.StringVar(&f.cacheHost, "cache-host", "localhost", "host name of the tenant's cache, for the netrc file")
	fl.StringVar(&f.builderID, "builder-id", "", "builder id of the generated builder key (default: NAME-runner)")
	cmd.AddCommand(add, newTenantUpgradeCmd(g))
	return cmd
}

type tenantUpgradeFlags struct {
	dir       string
	builderID string
	check     bool
}

func newTenantUpgradeCmd(g *globals) *cobra.Command {
	f := &tenantUpgradeFlags{}
	cmd := &cobra.Command{
		Use:   "upgrade [flags] NAME",
		Short: "Rewrite a tenant's account.conf with this version's permissions",
		Long: `Rewrite the account.conf of tenant NAME, made by 'tenant add' of an older
version, with the permissions this version's runners, pushers, submitters
and admins use, keeping the account's NKey users (the seeds in the
directory), its JetStream limits and its runner's builder id. Every allow
list becomes this version's: rights added to the file by hand are dropped
(the output lists each right added and removed; run --check first). A
role the tenant is older than (the submitter) gets a new seed and user;
limits below what this version needs are raised.

The old file is kept beside the new one as account.conf.<UTC time>, and
the new one replaces it atomically. Reload nats-server afterwards
(nats-server --signal reload, or SIGHUP). Nothing is written when the
file's users, rights and limits are current, or when the upgrade could
lose or misplace something: a user in the file whose seed is not in the
directory, a seed whose user is not in the file, a seed holding another
role's key, settings or forms 'tenant add' does not write (exports,
imports, deny lists, rights not as {allow: [...]}), or a runner that
stages for another builder id than NAME-runner or one of policy.yaml's
(give it with --builder-id).

With --check, nothing is written: exit 0 when account.conf is current,
1 when it is not (the changes are printed).`,
		Example: `  provenix tenant upgrade acme --dir /etc/provenix/tenants/acme
  nats-server --signal reload`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTenantUpgrade(g, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dir, "dir", "", "the tenant's directory (default: the data directory's tenants/NAME)")
	fl.StringVar(&f.builderID, "builder-id", "", "the runner user's builder id (default: found from account.conf and policy.yaml)")
	fl.BoolVar(&f.check, "check", false, "write nothing; exit 1 when account.conf is out of date")
	return cmd
}

func runTenantUpgrade(g *globals, f *tenantUpgradeFlags, name string) error {
	if err := tenant.ValidName(name); err != nil {
		return usageError("%v", err)
	}
	dir := f.dir
	if dir == "" {
		dir = filepath.Join(g.dataDir, "tenants", name)
	}
	res, err := tenant.Upgrade(tenant.UpgradeOptions{Dir: dir, Name: name, BuilderID: f.builderID, DryRun: f.check})
	if err != nil {
		return err
	}
	w := g.stdout
	path := filepath.Join(dir, tenant.FileAccount)
	for _, r := range res.Raised {
		fmt.Fprintf(w, "limits: %s\n", r)
	}
	if !res.Changed {
		fmt.Fprintf(w, "%s is current%s\n", path, runnerOf(res))
		return nil
	}
	for _, c := range res.Changes {
		what := fmt.Sprintf("%d rights added, %d removed", len(c.Added), len(c.Removed))
		if c.New {
			what = "new user"
		}
		fmt.Fprintf(w, "%s: %s\n", c.Role, what)
		for _, s := range c.Added {
			fmt.Fprintf(w, "  + %s\n", s)
		}
		for _, s := range c.Removed {
			fmt.Fprintf(w, "  - %s\n", s)
		}
	}
	created, takenUp := "created", "took up"
	if f.check {
		created, takenUp = "would create", "would take up"
	}
	for _, r := range res.NewSeeds {
		user := ""
		if !f.check { // a dry run's key is thrown away
			user = " (user " + res.Tenant.Users[r] + ")"
		}
		fmt.Fprintf(w, "%s %s%s\n", created, filepath.Join(dir, tenant.SeedFile(r)), user)
	}
	for _, r := range res.TakenUp {
		fmt.Fprintf(w, "%s %s, which an upgrade cut short left (user %s)\n", takenUp, filepath.Join(dir, tenant.SeedFile(r)), res.Tenant.Users[r])
	}
	if f.check {
		return &exitError{code: exitFailed, err: fmt.Errorf("%s is out of date: run 'provenix tenant upgrade %s' and reload nats-server", path, name)}
	}
	fmt.Fprintf(w, "rewrote %s%s; the old one is %s\nreload nats-server: nats-server --signal reload\n",
		path, runnerOf(res), res.Backup)
	return nil
}

func runTenantAdd(g *globals, f *tenantAddFlags, name string) error {
	if err := tenant.ValidName(name); err != nil {
		return usageError("%v", err)
	}
	dir := f.dir
	if dir == "" {
		dir = filepath.Join(g.dataDir, "tenants", name)
	}
	if f.limits.MaxFile == 0 {
		f.limits.MaxFile = tenant.DefaultMaxFile
	}
	t, err := tenant.Add(tenant.Options{Name: name, Dir: dir, Limits: f.limits, CacheHost: f.cacheHost, BuilderID: f.builderID})
	if errors.Is(err, tenant.ErrInvalidName) {
		return usageError("%v", err)
	}
	if err != nil {
		return err
	}
	w := g.stdout
	fmt.Fprintf(w, "tenant %s: files in %s\n", name, dir)
	fmt.Fprintf(w, "  NATS users: runner    %s\n              pusher    %s\n              submitter %s\n              admin     %s\n",
		t.Users[queue.RoleRunner], t.Users[queue.RolePusher], t.Users[queue.RoleSubmitter], t.Users[queue.RoleAdmin])
	fmt.Fprintf(w, "\n1. Add the account to nats-server.conf (JetStream enabled) and reload it:\n")
	fmt.Fprintf(w, "     accounts {\n       include %q\n     }\n", t.Path(tenant.FileAccount))
	fmt.Fprintf(w, "2. Runners:  provenix build --nats-url URL --nats-nkey %s --tenant %s \\\n              --key %s --builder-id %s ...\n",
		t.Path(tenant.SeedFile(queue.RoleRunner)), name, t.Path(tenant.FileBuilderKey), t.BuilderID)
	fmt.Fprintf(w, "3. Pusher:   provenix cache-push --nats-url URL --nats-nkey %s --tenant %s \\\n              --policy %s --cache-key %s --dir CACHE_DIR\n",
		t.Path(tenant.SeedFile(queue.RolePusher)), name, t.Path(tenant.FilePolicy), t.Path(tenant.FileCacheKey))
	fmt.Fprintf(w, "4. Cache:    provenix cache serve --dir CACHE_DIR --readers %s\n", t.Path(tenant.FileCacheReaders))
	fmt.Fprintf(w, "5. Farm:     provenix submit --nats-url URL --nats-nkey %s --tenant %s \\\n              --builder-id %s --cache CACHE_URL --cache-key %s.pub ...\n",
		t.Path(tenant.SeedFile(queue.RoleSubmitter)), name, queue.SubmitterBuilderID(name), t.Path(tenant.FileCacheKey))
	fmt.Fprintf(w, "6. Clients:  netrc-file = %s   (machine %s)\n             trusted-public-keys = %s\n",
		t.Path(tenant.FileNetrc), f.cacheHost, t.CachePublicKey)
	fmt.Fprintf(w, "\n%s", t.Snippet)
	return nil
}

// runnerOf says which builder id the tenant's runner user stages for.
func runnerOf(res *tenant.Upgraded) string {
	if res.Tenant.BuilderID == "" {
		return " (no runner user)"
	}
	return " (runner builder id " + res.Tenant.BuilderID + ")"
}

// byteSize is a flag holding a byte count: a plain number, or one with a
// binary suffix (KiB, MiB, GiB, TiB; K, M, G, T mean the same), or -1.
type byteSize struct{ p *int64 }

var byteSuffixes = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

func (b byteSize) String() string {
	if b.p == nil {
		return "0"
	}
	return strconv.FormatInt(*b.p, 10)
}

func (b byteSize) Type() string { return "bytes" }

func (b byteSize) Set(s string) error {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, sf := range byteSuffixes {
		if n, ok := strings.CutSuffix(num, sf.suffix); ok {
			num, shift = strings.TrimSpace(n), sf.shift
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < -1 || (v == -1 && shift != 0) || (shift > 0 && v > (1<<62)>>shift) {
		return fmt.Errorf("%q: want a byte count such as 1073741824, 512MiB or 10GiB, or -1", s)
	}
	*b.p = v << shift
	return nil
}
