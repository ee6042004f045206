package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/examples"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

const demoDataDir = "provenix-demo"

func newDemoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the whole pipeline once on embedded defaults, step by step",
		Long: `Run the main job end to end on one machine, with real parts:
  1. check prerequisites (Nix, a static busybox for the sample's builder)
  2. start embedded NATS, a cache pusher and the cache server (keys generated)
  3. build the sample derivation with the host's Nix, attest, sign, publish
  4. wait until the pusher has verified it and written the cache entry
  5. substitute it with stock nix into a fresh chroot store from the cache
  6. verify its provenance against the cache, as users would
Each step prints its duration. Everything is left under the data directory
(default ./provenix-demo): keys/, policy.yaml, cache/ (narinfo, NARs,
provenance sidecars), client-store/ and nats/.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f := cmd.Flag("data-dir"); f == nil || !f.Changed {
				g.dataDir = demoDataDir
			}
			// The steps say what happens; component logs would interleave.
			if f := cmd.Flag("log-level"); f == nil || !f.Changed {
				g.logLevel = "warn"
			}
			return runDemo(cmd.Context(), g)
		},
	}
}

// step prints a numbered step with its duration.
type stepper struct {
	g     *globals
	n     int
	start time.Time
}

func (s *stepper) do(title string, f func() (string, error)) error {
	s.n++
	fmt.Fprintf(s.g.stdout, "[%d] %s ...\n", s.n, title)
	t0 := time.Now()
	detail, err := f()
	d := time.Since(t0)
	if err != nil {
		fmt.Fprintf(s.g.stdout, "[%d] FAILED after %s: %v\n", s.n, d.Round(time.Millisecond), err)
		return err
	}
	fmt.Fprintf(s.g.stdout, "[%d] ok in %s%s\n", s.n, d.Round(time.Millisecond), indentDetail(detail))
	return nil
}

func indentDetail(s string) string {
	if s == "" {
		return ""
	}
	return "\n      " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n      ")
}

func runDemo(ctx context.Context, g *globals) error {
	st := &stepper{g: g, start: time.Now()}
	var busybox string
	if err := st.do("check prerequisites", func() (string, error) {
		if err := nix.Available(); err != nil {
			return "", err
		}
		bb, err := exec.LookPath("busybox")
		if err != nil {
			return "", errors.New("busybox not found: the sample derivation's builder is a static busybox (Debian/Ubuntu: apt-get install busybox-static)")
		}
		if busybox, err = filepath.EvalSymlinks(bb); err != nil {
			return "", err
		}
		v, err := (&nix.Nix{}).Version(ctx)
		return fmt.Sprintf("nix %s, busybox %s", v, busybox), err
	}); err != nil {
		return err
	}

	var stack *up.Stack
	if err := st.do("start embedded NATS, cache pusher and cache server", func() (string, error) {
		var err error
		if stack, err = up.New(up.Config{DataDir: g.dataDir, Listen: "127.0.0.1:0", Logger: g.logger()}); err != nil {
			return "", err
		}
		if err := stack.Open(ctx); err != nil {
			return "", err
		}
		return fmt.Sprintf("data dir %s\nNATS %s, cache %s", stack.Paths().Dir, stack.NATSURL(), stack.CacheURL()), nil
	}); err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		stack.Close(cctx)
	}()
	paths := stack.Paths()
	offline := nix.OfflineOptions()

	var pub builder.Published
	buildStart := time.Now()
	if err := st.do("build the sample with Nix, attest, sign and publish", func() (string, error) {
		sample := filepath.Join(paths.Dir, "sample", "hello.nix")
		if err := os.MkdirAll(filepath.Dir(sample), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(sample, examples.HelloNix, 0o644); err != nil {
			return "", err
		}
		signer, err := attest.LoadSigner(paths.BuilderKey())
		if err != nil {
			return "", err
		}
		conn, err := queue.Connect(ctx, stack.NATSURL(), queue.WithToken(stack.NATSToken()), queue.WithName("provenix-demo-build"))
		if err != nil {
			return "", err
		}
		defer conn.Close()
		b := &builder.Builder{
			Nix: &nix.Nix{Options: offline}, Queue: conn, Signer: signer,
			BuilderID: up.DefaultBuilderID, Tenant: up.DefaultTenant, Version: version, Logger: g.logger(),
			StageClosures: true, // the pusher checks output paths against it
		}
		pubs, err := b.Build(ctx, builder.Target{
			Installable: attest.Installable{Kind: "file", File: sample, Attr: "hello"},
			Args:        map[string]string{"busybox": busybox},
		})
		if err != nil {
			return "", err
		}
		pub = pubs[0]
		o := pub.Outputs[0]
		return fmt.Sprintf("%s\n-> %s\nNAR sha256 %s (%d bytes); built in %s, attested+published in %s",
			pub.DrvPath, o.Path, o.NarHashHex(), o.NarSize, pub.Built.Round(time.Millisecond), pub.Publish.Round(time.Millisecond)), nil
	}); err != nil {
		return err
	}
	out := pub.Outputs[0]

	if err := st.do("wait for the pusher to verify it and write the cache entry", func() (string, error) {
		// A rejection fails the demo at once, with its reason.
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		err := stack.WaitPublished(wctx, pub.DrvPath, out.Path, buildStart)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return "", errors.New("no cache entry after 60s; run with --log-level debug")
		}
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s/%s", stack.CacheURL(), cachelayout.NarinfoKey(out.Path)), nil
	}); err != nil {
		return err
	}

	if err := st.do("substitute it with stock nix into a fresh chroot store", func() (string, error) {
		root := filepath.Join(paths.Dir, "client-store")
		if err := os.RemoveAll(root); err != nil {
			return "", err
		}
		pub, err := os.ReadFile(paths.CachePub())
		if err != nil {
			return "", err
		}
		client := &nix.Nix{Root: root, Options: nix.SubstituteOptions(stack.CacheURL(), strings.TrimSpace(string(pub)))}
		if _, err := client.Realise(ctx, out.Path); err != nil {
			return "", err
		}
		infos, err := client.PathInfo(ctx, out.Path)
		if err != nil {
			return "", err
		}
		if infos[0].NarHash != out.NarHash {
			return "", fmt.Errorf("substituted NAR sha256 %x differs from the attested %s", infos[0].NarHash, out.NarHashHex())
		}
		msg, _ := os.ReadFile(filepath.Join(client.RealPath(out.Path), "share", "message"))
		return fmt.Sprintf("nix-store --store %s -r %s\nrestored NAR sha256 equals the attested one; it says: %s", root, out.Path, strings.TrimSpace(string(msg))), nil
	}); err != nil {
		return err
	}

	var rep *report
	if err := st.do("verify its provenance from the cache", func() (string, error) {
		var err error
		rep, err = runVerify(ctx, g, &verifyFlags{
			cache: stack.CacheURL(), keys: []string{paths.BuilderPub()}, builderID: up.DefaultBuilderID,
			cacheKey: paths.CachePub(), quorum: 1,
		}, out.Path)
		if err != nil {
			return "", err
		}
		if !rep.Verified {
			return "", errors.New(rep.Reason)
		}
		return fmt.Sprintf("provenix verify --cache %s --key %s --cache-key %s %s\n%s",
			stack.CacheURL(), paths.BuilderPub(), paths.CachePub(), out.Path, rep.Verdict), nil
	}); err != nil {
		return err
	}
	rep.WriteText(g.stdout)
	fmt.Fprintf(g.stdout, "\ndemo passed in %s. Left for inspection under %s:\n  keys/      builder and cache keys (.pub = public)\n  policy.yaml\n  cache/     %s, nar/, %s\n  client-store/  the chroot store nix substituted into\n",
		time.Since(st.start).Round(time.Millisecond), paths.Dir, cachelayout.NarinfoKey(out.Path), cachelayout.ProvenanceKey(out.Path))
	return nil
}
