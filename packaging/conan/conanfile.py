import os

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, rmdir

required_conan_version = ">=2.0"


class TaotokenConan(ConanFile):
    """Conan 2 recipe for taotoken-cpp, kept in packaging/conan/ of the
    repository it packages (the sources are two directories up):

        conan create packaging/conan --build=missing -o "taotoken/*:sim=True"
    """

    name = "taotoken"
    version = "0.1.0"
    description = "Embeddable C++17 client for OpenAI-compatible chat-completion APIs (Taotoken by default)"
    license = "MIT"
    homepage = "https://taotoken.net"
    topics = ("llm", "openai", "chat-completion", "http-client")
    package_type = "library"
    settings = "os", "arch", "compiler", "build_type"
    options = {
        "shared": [True, False],
        "fPIC": [True, False],
        # Simulator library taotoken::sim plus the taotoken / taotoken-sim tools.
        "sim": [True, False],
    }
    default_options = {"shared": False, "fPIC": True, "sim": False}

    def export_sources(self):
        root = os.path.join(self.recipe_folder, "..", "..")
        for pattern in ("CMakeLists.txt", "LICENSE", "cmake/*", "include/*", "src/*", "tools/*"):
            copy(self, pattern, src=root, dst=self.export_sources_folder)

    def config_options(self):
        if self.settings.os == "Windows":
            del self.options.fPIC
            del self.options.sim  # the simulator uses POSIX sockets

    def configure(self):
        if self.options.shared:
            self.options.rm_safe("fPIC")

    def layout(self):
        cmake_layout(self)
        # The project root is two levels above this file (pattern of Conan's
        # "conanfile inside a subfolder" example; export_sources() copies the
        # tree from there for `conan create`).
        self.folders.root = os.path.join("..", "..")

    def requirements(self):
        # None of them appears in the public headers.
        self.requires("libcurl/[>=7.80 <9]")
        self.requires("simdjson/[>=3.0 <4]")
        self.requires("fmt/[>=9 <12]")
        if self.options.get_safe("sim"):
            self.requires("zlib/[>=1.2.11 <2]")

    def validate(self):
        check_min_cppstd(self, 17)
        if self.settings.os == "Windows" and self.options.shared:
            raise ConanInvalidConfiguration("taotoken has no dllexport annotations: build it static on Windows")

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["TAOTOKEN_INSTALL"] = True
        tc.cache_variables["TAOTOKEN_BUILD_TESTS"] = False
        tc.cache_variables["TAOTOKEN_BUILD_EXAMPLES"] = False
        tc.cache_variables["TAOTOKEN_BUILD_BENCH"] = False
        tc.cache_variables["TAOTOKEN_BUILD_TOOLS"] = bool(self.options.get_safe("sim"))
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        copy(self, "LICENSE", src=self.source_folder, dst=os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.install()
        # Consumers get Conan-generated CMake and pkg-config files instead.
        rmdir(self, os.path.join(self.package_folder, "lib", "cmake"))
        rmdir(self, os.path.join(self.package_folder, "lib", "pkgconfig"))
        rmdir(self, os.path.join(self.package_folder, "share"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "taotoken")
        # The aggregate of all components gets its own name, so that
        # taotoken::taotoken stays the core library alone (without sim/zlib).
        self.cpp_info.set_property("cmake_target_name", "taotoken::all")
        self.cpp_info.set_property("pkg_config_name", "taotoken-all")

        core = self.cpp_info.components["taotoken"]
        core.set_property("cmake_target_name", "taotoken::taotoken")
        core.set_property("pkg_config_name", "taotoken")
        core.libs = ["taotoken"]
        core.requires = ["libcurl::libcurl", "simdjson::simdjson", "fmt::fmt"]
        if self.settings.os in ("Linux", "FreeBSD"):
            core.system_libs = ["pthread"]

        if self.options.get_safe("sim"):
            sim = self.cpp_info.components["sim"]
            sim.set_property("cmake_target_name", "taotoken::sim")
            sim.set_property("pkg_config_name", "taotoken-sim")
            sim.libs = ["taotoken_sim"]
            sim.requires = ["taotoken", "simdjson::simdjson", "fmt::fmt", "zlib::zlib"]
            if self.settings.os in ("Linux", "FreeBSD"):
                sim.system_libs = ["pthread"]
