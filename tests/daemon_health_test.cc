// Every daemon serves the standard gRPC health service (grpc.health.v1) and
// reports SERVING for the whole server and for each of its stip.v1 services.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

const std::string kBin = STIP_BIN_DIR;

grpc::health::v1::HealthCheckResponse::ServingStatus Check(const std::string& address,
                                                           const std::string& service) {
  TlsOptions tls;
  tls.insecure = true;
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(address, tls, "health probe"));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << address << " " << service << ": " << s.error_message();
  return resp.status();
}

TEST(DaemonHealth, AllThreeDaemonsReportServing) {
  test::TempDir tmp("stip-health");
  const std::string& dir = tmp.path();
  const auto serving = grpc::health::v1::HealthCheckResponse::SERVING;
  {
    test::Daemon server({kBin + "/server/stip-server", "--listen", "127.0.0.1:0", "--store",
                         dir + "/store", "--admin-listen", "127.0.0.1:0", "--insecure"},
                        dir + "/server.log");
    const std::string server_addr = server.WaitListening();
    const std::string admin_addr = server.Value("admin on ");
    ASSERT_FALSE(admin_addr.empty());
    EXPECT_EQ(Check(server_addr, ""), serving);
    EXPECT_EQ(Check(server_addr, "stip.v1.Inference"), serving);
    // The model store is on the admin port (for the developer).
    EXPECT_EQ(Check(admin_addr, ""), serving);
    EXPECT_EQ(Check(admin_addr, "stip.v1.ModelStore"), serving);

    test::RunResult user = test::Run(
        {kBin + "/developer/stip-developer", "add-user", "probe", "--state", dir + "/dev"}, 60);
    ASSERT_EQ(user.exit_code, 0) << user.err;
    std::string token = user.out.substr(0, user.out.find('\n'));
    test::Daemon developer(
        {kBin + "/developer/stip-developer", "serve", "--model", test::ModelDir("kjv-gpt2"),
         "--state", dir + "/dev", "--listen", "127.0.0.1:0", "--server", admin_addr,
         "--public-server-address", server_addr, "--insecure"},
        dir + "/developer.log");
    const std::string dev_addr = developer.WaitListening(180);
    EXPECT_EQ(Check(dev_addr, ""), serving);
    EXPECT_EQ(Check(dev_addr, "stip.v1.Registry"), serving);

    test::RunResult reg =
        test::Run({kBin + "/client/stip-client", "register", "--developer", dev_addr, "--user",
                   "probe", "--token", token, "--data-dir", dir + "/client", "--insecure"},
                  120);
    ASSERT_EQ(reg.exit_code, 0) << reg.err;
    test::Daemon client({kBin + "/client/stip-client", "serve", "--data-dir", dir + "/client",
                         "--listen", "127.0.0.1:0", "--insecure"},
                        dir + "/client.log");
    const std::string client_addr = client.WaitListening();
    EXPECT_EQ(Check(client_addr, ""), serving);
    EXPECT_EQ(Check(client_addr, "stip.v1.Chat"), serving);
  }
  if (::testing::Test::HasFailure()) tmp.Keep();  // the logs
}

}  // namespace
}  // namespace stip
