package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/oci"
	"codeberg.org/provenix/provenix/vsa"
)

func newOCICmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "oci", Short: "Name the OCI images the cache server serves"}
	var (
		cache      cacheFlags
		entrypoint []string
	)
	tag := &cobra.Command{
		Use:   "tag NAME:TAG STOREPATH [flags]",
		Short: "Serve a published store path's image as NAME:TAG",
		Long: `Point NAME:TAG of the cache's registry (/v2/ on 'provenix cache serve' and
'provenix up') at a published store path: its image has one layer per path
of its closure. The tag is kept in the cache (a directory, --dir, or an S3
bucket, --s3-*), so every server of the cache serves it. Every published
path is also served, without a tag, as nix/<hash>-<name>:latest.

The image runs the path's only program in bin/, or --entrypoint (repeat it
for arguments); PATH is the path's bin/. Repositories under nix/ are the
store paths' own and cannot be tagged. --delete NAME:TAG removes a tag.`,
		Example: `  provenix oci tag --dir /srv/cache hello:1.0 /nix/store/...-hello-1.0
  provenix oci tag --dir /srv/cache tools/busybox:stable /nix/store/...-busybox --entrypoint /nix/store/...-busybox/bin/busybox --entrypoint sh
  podman run --tls-verify=false 127.0.0.1:8080/hello:1.0`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			del, _ := cmd.Flags().GetBool("delete")
			if del != (len(args) == 1) {
				return usageError("give NAME:TAG and STOREPATH, or NAME:TAG with --delete")
			}
			if _, _, err := oci.ParseRef(args[0]); err != nil {
				return usageError("%v", err)
			}
			st, err := cache.open(cmd.Context(), g, true, false)
			if err != nil {
				return err
			}
			defer st.Close()
			if del {
				if err := oci.DeleteTag(cmd.Context(), st.Store, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "deleted %s\n", args[0])
				return nil
			}
			if err := oci.SetTag(cmd.Context(), st.Store, args[0], args[1], entrypoint); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s -> %s\n", args[0], args[1])
			return nil
		},
	}
	cache.register(tag)
	tag.Flags().StringArrayVar(&entrypoint, "entrypoint", nil, "the image's entrypoint, one argument per flag (default: the path's only program in bin/)")
	tag.Flags().Bool("delete", false, "remove NAME:TAG")
	cmd.AddCommand(tag)
	return cmd
}

// registerImageSigner adds the VSA flags 'cache serve' takes: the
// pusher's key (keyless signers cannot sign image summaries), its verifier
// id and the cache's public URL.
func (f *vsaFlags) registerImageSigner(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.key, "vsa-key", "", "the pusher's VSA key (PEM): sign OCI images' verification summaries with it (default: serve only summaries already signed)")
	fl.StringVar(&f.verifierID, "vsa-verifier-id", "", "the verifier.id the pusher's summaries claim, a URI (default "+vsa.DefaultVerifierID+")")
	fl.StringVar(&f.publicURL, "public-url", "", "the cache's public base URL, for the URIs in image summaries (default: relative to the cache)")
}

// imageSigner is the signer of images' summaries that 'cache serve' was
// given: nil without --vsa-key.
func (f *vsaFlags) imageSigner() (*vsa.Signer, error) {
	if f.key == "" {
		return nil, nil
	}
	return f.signer(f.key)
}
