package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/up"
)

type submitFlags struct {
	nats        natsFlags
	tenant      string
	attrs       []string
	args        []string
	argstrs     []string
	quorum      int
	maxAttempts int
	cache       string
	cacheKeys   []string
	storeRoot   string
	noClosure   bool
	builderID   string
	dependents  string
	json        bool
	watch       bool
}

func newSubmitCmd(g *globals) *cobra.Command {
	f := &submitFlags{}
	cmd := &cobra.Command{
		Use:   "submit [flags] FILE.nix -A ATTR... | DRV...",
		Short: "Submit a build set to the farm: a derivation closure, built in dependency order by workers",
		Long: `Create a build set from derivations (.drv paths, or FILE.nix with one or more
-A ATTR, instantiated by the host's Nix): the closure of their .drv files,
read from the local store, and staged (nix-store --export) for the workers
to import. Derivations whose outputs the cache has already
are skipped; the others are dispatched by the farm's schedulers to workers
able to build them (system, extra-platforms, system features), each once
the outputs it needs are in the cache. With --quorum N each derivation goes
to N builders of distinct owners. A build that fails is retried on another
builder, up to --max-attempts failures; what depends on it is then blocked.

It prints the set's id; 'provenix farm status ID' follows it, 'provenix farm
cancel ID' stops it.`,
		Example: `  provenix submit ./release.nix -A hello -A coreutils --quorum 2
  provenix submit ./release.nix -A all --dependents-of /nix/store/...-openssl-3.0.drv
  provenix submit --json /nix/store/...-hello.drv`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSubmit(cmd.Context(), g, f, args)
		},
	}
	fl := cmd.Flags()
	f.nats.register(cmd)
	fl.StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant the builds belong to")
	fl.StringArrayVarP(&f.attrs, "attr", "A", nil, "attribute of FILE.nix to submit (repeatable)")
	fl.StringArrayVar(&f.args, "arg", nil, "NAME EXPR (as Nix takes it) or NAME=EXPR, passed as --arg to FILE.nix")
	fl.StringArrayVar(&f.argstrs, "argstr", nil, "NAME VALUE (as Nix takes it) or NAME=VALUE, passed as --argstr to FILE.nix")
	fl.IntVar(&f.quorum, "quorum", 1, "distinct owners that build each derivation")
	fl.IntVar(&f.maxAttempts, "max-attempts", farm.DefaultMaxAttempts, "failed builds of one derivation before it fails and blocks its dependents")
	fl.StringVar(&f.cache, "cache", "", "binary cache whose paths count as built (default: the running 'provenix up' of --data-dir)")
	fl.StringArrayVar(&f.cacheKeys, "cache-key", nil, "file holding the cache's public key, NAME:base64 (repeatable; default: the data directory's keys/cache.pub)")
	fl.StringVar(&f.storeRoot, "store", "", "read .drv files from a chroot store rooted at this directory")
	fl.StringVar(&f.dependents, "dependents-of", "", "mass rebuild: submit the derivations of the targets whose closure holds this .drv or output path, not the targets")
	fl.StringVar(&f.builderID, "builder-id", up.DefaultBuilderID, "builder id whose staging scope the .drv closure goes to (a tenant's submitter user may stage as TENANT-submitter only)")
	fl.BoolVar(&f.noClosure, "no-closure", false, "do not stage the .drv closure export (workers then need the derivations in their stores)")
	fl.BoolVar(&f.json, "json", false, "print the set as JSON (with --watch: its progress, one JSON object a line, then its status)")
	fl.BoolVar(&f.watch, "watch", false, "follow the set until it is finished, as 'provenix farm status --watch' does")
	return cmd
}

func runSubmit(ctx context.Context, g *globals, f *submitFlags, targets []string) error {
	nx := &nix.Nix{Root: f.storeRoot, Stderr: g.stderr}
	args, err := builder.ParsePairs("arg", f.args)
	if err != nil {
		return targetError(err)
	}
	argstrs, err := builder.ParsePairs("argstr", f.argstrs)
	if err != nil {
		return targetError(err)
	}
	roots, err := farm.Roots(ctx, nx, targets, farm.RootsOptions{Attrs: f.attrs, Args: args, ArgStrs: argstrs})
	if errors.Is(err, farm.ErrInvalid) {
		return &exitError{code: exitUsageErr, err: err}
	}
	if err != nil {
		return err
	}
	cache, err := farmCache(g, f.cache, f.cacheKeys)
	if err != nil {
		return err
	}
	conn, err := f.nats.connect(ctx, g, "provenix submit")
	if err != nil {
		return err
	}
	defer conn.Close()
	id, closure := farm.NewSetID(), ""
	if !f.noClosure {
		if closure, err = farm.StageClosure(ctx, conn, nx, f.builderID, id, roots); err != nil {
			return err
		}
	}
	sub, err := farm.Submit(ctx, conn, farm.SubmitOptions{Tenant: f.tenant, ID: id, Roots: roots, Closure: closure, Quorum: f.quorum,
		MaxAttempts: f.maxAttempts, Cache: cache, DependentsOf: f.dependents, Read: func(p string) ([]byte, error) { return os.ReadFile(nx.RealPath(p)) }})
	if err != nil {
		return err
	}
	if f.json && !f.watch {
		return writeJSON(g, sub)
	}
	if !f.json {
		fmt.Fprintf(g.stdout, "%s\n", sub.Set.ID)
	}
	fmt.Fprintf(g.stderr, "build set %s: %d derivations, %d already in the cache, %d ready to build\n",
		sub.Set.ID, sub.Set.Size, sub.Skipped, sub.Ready)
	if !f.watch {
		return nil
	}
	if err := watchSet(ctx, g, conn, sub.Set.ID, f.json); err != nil {
		return err
	}
	st, err := farm.GetStatus(ctx, conn, sub.Set.ID)
	if err != nil {
		return err
	}
	return printSetStatus(g, st, f.json)
}

// farmCache is the cache the farm checks: --cache and --cache-key, or
// the running 'provenix up' of the data directory and its key.
func farmCache(g *globals, url string, keyFiles []string) (*farm.Caches, error) {
	if url == "" {
		rt, err := up.ReadRuntime(g.paths())
		if err != nil {
			return nil, usageError("no cache to check: %v\nPass --cache URL --cache-key FILE, or start 'provenix up --data-dir %s'", err, g.dataDir)
		}
		url = rt.CacheURL
	}
	if len(keyFiles) == 0 {
		keyFiles = []string{g.paths().CachePub()}
	}
	var keys []string
	for _, k := range keyFiles {
		b, err := os.ReadFile(k)
		if err != nil {
			return nil, usageError("cache key: %v", err)
		}
		keys = append(keys, strings.TrimSpace(string(b)))
	}
	return farm.CacheAt(url, keys)
}
