// Command apiv2client drives trioscale's /api/v2 with Tailscale's own Go API client
// (tailscale.com/client/tailscale/v2), authenticated as an OAuth client, the way tools written
// for Tailscale do. The test (tests/tailscaled/test_apiv2_client.py) runs it in steps around a
// real client joining; each step prints one JSON object on stdout and exits non-zero on any
// surprise, naming it on stderr.
//
//	apiv2client policy               read the policy (HuJSON and ETag), write one with tagOwners, read it back
//	apiv2client key TAG              list devices, create a tagged single-use auth key
//	apiv2client configure HOST ROUTE find HOST, check its tag, enable ROUTE, set DNS, read everything back
//	apiv2client refused              with the token the test gives (lacking scopes), expect 403 from every route
//
// TS_BASE_URL, TS_CLIENT_ID and TS_CLIENT_SECRET name the server and the OAuth client; "refused"
// takes TS_API_KEY (an access token) instead.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	tailscale "tailscale.com/client/tailscale/v2"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "apiv2client: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func emit(v any) {
	out, err := json.Marshal(v)
	check(err, "encoding the result")
	fmt.Println(string(out))
}

func client() *tailscale.Client {
	base, err := url.Parse(os.Getenv("TS_BASE_URL"))
	check(err, "TS_BASE_URL")
	c := &tailscale.Client{BaseURL: base, Tailnet: "-"}
	if key := os.Getenv("TS_API_KEY"); key != "" {
		c.APIKey = key
		return c
	}
	c.Auth = &tailscale.OAuth{
		ClientID:     os.Getenv("TS_CLIENT_ID"),
		ClientSecret: os.Getenv("TS_CLIENT_SECRET"),
	}
	return c
}

const policy = `{
  // written through Tailscale's API client
  "tagOwners": {"tag:ci": ["alice@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}
`

func doPolicy(ctx context.Context, c *tailscale.Client) {
	before, err := c.PolicyFile().Raw(ctx)
	check(err, "reading the policy")
	if before.ETag == "" {
		fail("the policy came without an ETag")
	}
	check(c.PolicyFile().Validate(ctx, policy), "validating the policy")
	if err := c.PolicyFile().Validate(ctx, `{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["*:*"]}]}`); err == nil {
		fail("an invalid policy validated")
	}
	check(c.PolicyFile().Set(ctx, policy, before.ETag), "writing the policy")
	// the ETag read before the write is stale now: a second write with it must be refused
	err = c.PolicyFile().Set(ctx, policy, before.ETag)
	var apiErr tailscale.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 412 {
		fail("a write with a stale ETag was not refused with 412: %v", err)
	}
	after, err := c.PolicyFile().Raw(ctx)
	check(err, "reading the policy back")
	if after.HuJSON != policy {
		fail("the policy read back differs: %q", after.HuJSON)
	}
	parsed, err := c.PolicyFile().Get(ctx)
	check(err, "reading the policy as JSON")
	emit(map[string]any{"etag_before": before.ETag, "etag_after": after.ETag, "tagOwners": parsed.TagOwners,
		"acls": len(parsed.ACLs)})
}

func doKey(ctx context.Context, c *tailscale.Client, tag string) {
	devices, err := c.Devices().List(ctx)
	check(err, "listing devices")
	var req tailscale.CreateKeyRequest
	req.Capabilities.Devices.Create.Tags = []string{tag}
	req.Capabilities.Devices.Create.Preauthorized = true
	req.ExpirySeconds = 600
	req.Description = "from the Go API client"
	key, err := c.Keys().CreateAuthKey(ctx, req)
	check(err, "creating an auth key")
	got, err := c.Keys().Get(ctx, key.ID)
	check(err, "reading the key back")
	if !slices.Equal(got.Capabilities.Devices.Create.Tags, []string{tag}) || got.Description != req.Description {
		fail("the key read back differs: %+v", got)
	}
	emit(map[string]any{"devices": len(devices), "key": key.Key, "id": key.ID})
}

func find(ctx context.Context, c *tailscale.Client, host string) *tailscale.Device {
	devices, err := c.Devices().List(ctx)
	check(err, "listing devices")
	for i := range devices {
		if devices[i].Hostname == host {
			return &devices[i]
		}
	}
	fail("no device %q among %d", host, len(devices))
	return nil
}

func doConfigure(ctx context.Context, c *tailscale.Client, host, route string) {
	dev := find(ctx, c, host)
	if !slices.Equal(dev.Tags, []string{"tag:ci"}) {
		fail("device %s has tags %v, not the key's", host, dev.Tags)
	}
	// the client advertises the route as it starts; wait until the server has heard it
	deadline := time.Now().Add(30 * time.Second)
	for {
		routes, err := c.Devices().SubnetRoutes(ctx, dev.ID)
		check(err, "reading routes")
		if slices.Contains(routes.Advertised, route) {
			break
		}
		if time.Now().After(deadline) {
			fail("device %s never advertised %s: %+v", host, route, routes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	check(c.Devices().SetSubnetRoutes(ctx, dev.ID, []string{route}), "enabling the route")
	routes, err := c.Devices().SubnetRoutes(ctx, dev.ID)
	check(err, "reading routes back")
	if !slices.Equal(routes.Enabled, []string{route}) {
		fail("enabled routes read back: %v", routes.Enabled)
	}
	dns := c.DNS()
	check(dns.SetNameservers(ctx, []string{"9.9.9.9"}), "setting nameservers")
	check(dns.SetSearchPaths(ctx, []string{"corp.example"}), "setting search paths")
	check(dns.SetSplitDNS(ctx, tailscale.SplitDNSRequest{"lab.example": {"10.77.0.53"}}), "setting split DNS")
	check(dns.SetPreferences(ctx, tailscale.DNSPreferences{MagicDNS: true}), "setting DNS preferences")
	ns, err := dns.Nameservers(ctx)
	check(err, "reading nameservers")
	paths, err := dns.SearchPaths(ctx)
	check(err, "reading search paths")
	split, err := dns.SplitDNS(ctx)
	check(err, "reading split DNS")
	prefs, err := dns.Preferences(ctx)
	check(err, "reading DNS preferences")
	if !slices.Equal(ns, []string{"9.9.9.9"}) || !slices.Equal(paths, []string{"corp.example"}) ||
		!slices.Equal(split["lab.example"], []string{"10.77.0.53"}) || !prefs.MagicDNS {
		fail("DNS read back differs: %v %v %v %v", ns, paths, split, prefs)
	}
	users, err := c.Users().List(ctx, nil, nil)
	check(err, "listing users")
	emit(map[string]any{"device": dev.ID, "name": dev.Name, "enabled": routes.Enabled, "nameservers": ns,
		"searchPaths": paths, "users": len(users)})
}

// every route the issue names, called as the client calls it; each must answer 403
func doRefused(ctx context.Context, c *tailscale.Client, deviceID, keyID, userID string) {
	var req tailscale.CreateKeyRequest
	req.Capabilities.Devices.Create.Tags = []string{"tag:ci"}
	calls := map[string]func() error{
		"devices list":     func() error { _, err := c.Devices().List(ctx); return err },
		"device get":       func() error { _, err := c.Devices().Get(ctx, deviceID); return err },
		"device delete":    func() error { return c.Devices().Delete(ctx, deviceID) },
		"device authorize": func() error { return c.Devices().SetAuthorized(ctx, deviceID, true) },
		"routes get":       func() error { _, err := c.Devices().SubnetRoutes(ctx, deviceID); return err },
		"routes set":       func() error { return c.Devices().SetSubnetRoutes(ctx, deviceID, nil) },
		"tags set":         func() error { return c.Devices().SetTags(ctx, deviceID, []string{"tag:ci"}) },
		"key expiry":       func() error { return c.Devices().SetKey(ctx, deviceID, tailscale.DeviceKey{KeyExpiryDisabled: true}) },
		"name":             func() error { return c.Devices().SetName(ctx, deviceID, "other") },
		"keys create":      func() error { _, err := c.Keys().CreateAuthKey(ctx, req); return err },
		"keys list":        func() error { _, err := c.Keys().List(ctx, false); return err },
		"keys get":         func() error { _, err := c.Keys().Get(ctx, keyID); return err },
		"keys delete":      func() error { return c.Keys().Delete(ctx, keyID) },
		"policy get":       func() error { _, err := c.PolicyFile().Raw(ctx); return err },
		"policy set":       func() error { return c.PolicyFile().Set(ctx, policy, "") },
		"policy validate":  func() error { return c.PolicyFile().Validate(ctx, policy) },
		"nameservers get":  func() error { _, err := c.DNS().Nameservers(ctx); return err },
		"nameservers set":  func() error { return c.DNS().SetNameservers(ctx, nil) },
		"searchpaths get":  func() error { _, err := c.DNS().SearchPaths(ctx); return err },
		"searchpaths set":  func() error { return c.DNS().SetSearchPaths(ctx, nil) },
		"split-dns get":    func() error { _, err := c.DNS().SplitDNS(ctx); return err },
		"split-dns set":    func() error { return c.DNS().SetSplitDNS(ctx, nil) },
		"split-dns update": func() error { _, err := c.DNS().UpdateSplitDNS(ctx, nil); return err },
		"preferences get":  func() error { _, err := c.DNS().Preferences(ctx); return err },
		"preferences set":  func() error { return c.DNS().SetPreferences(ctx, tailscale.DNSPreferences{}) },
		"users list":       func() error { _, err := c.Users().List(ctx, nil, nil); return err },
		"users get":        func() error { _, err := c.Users().Get(ctx, userID); return err },
	}
	statuses := map[string]int{}
	var wrong []string
	for name, call := range calls {
		err := call()
		var apiErr tailscale.APIError
		if !errors.As(err, &apiErr) {
			wrong = append(wrong, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		statuses[name] = apiErr.Status
		if apiErr.Status != 403 {
			wrong = append(wrong, fmt.Sprintf("%s: %d %s", name, apiErr.Status, apiErr.Message))
		}
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		fail("not refused with 403:\n  %s", strings.Join(wrong, "\n  "))
	}
	emit(map[string]any{"refused": statuses})
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: apiv2client policy | key TAG | configure HOST ROUTE | refused DEVICE KEY USER")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := client()
	switch args := os.Args[2:]; os.Args[1] {
	case "policy":
		doPolicy(ctx, c)
	case "key":
		if len(args) != 1 {
			fail("usage: apiv2client key TAG")
		}
		doKey(ctx, c, args[0])
	case "configure":
		if len(args) != 2 {
			fail("usage: apiv2client configure HOST ROUTE")
		}
		doConfigure(ctx, c, args[0], args[1])
	case "refused":
		if len(args) != 3 {
			fail("usage: apiv2client refused DEVICE KEY USER")
		}
		doRefused(ctx, c, args[0], args[1], args[2])
	default:
		fail("unknown step %q", os.Args[1])
	}
}
