# Stand-in for Open OnDemand's dashboard, for tests: renders an installed batch-connect app the
# way OnDemand 3 does (real Ruby ERB, trim mode "-"), then writes the job script and sbatch
# arguments that OnDemand's Slurm adapter would use. Nothing here is OnDemand's code; it follows
# its documented behaviour:
#   - form values are strings; attributes given as a bare value in form.yml are fixed;
#   - submit.yml.erb sees the values as methods of an OpenStruct (plus staged_root);
#   - template/ is copied into the session folder (modes kept) and each *.erb is rendered with a
#     binding whose `session` and `context` are the session and the form values;
#   - smart attributes add scheduler options (bc_queue/auto_queues -> -p, bc_account/auto_accounts
#     -> -A, bc_num_hours -> -t, email_on_* -> --mail-type); then, as ood_core's Slurm adapter
#     does, --export (NONE, or the names in script.job_environment, "ALL," first with
#     copy_environment), then script.native; the job_environment values (as strings) are the
#     environment sbatch is run with, so they reach the job and nothing else from the web node does;
#   - the "basic" job script cds to the session folder, sources before.sh, forks script.sh,
#     waits for it, and exits non-zero when it failed;
#   - submit.yml.erb is rendered before template/ is staged (Session#save), so a refusal there
#     stages nothing;
#   - completed.html.erb is rendered with the session as self.
#
#   ruby ood_render.rb submit APP_DIR SESSION_DIR VALUES.json
#       -> stdout: {"script":..,"args":[..],"environment":{..},"submit":{..}}: run `sbatch ARGS SCRIPT`
#          with ENVIRONMENT added to its own to submit what OnDemand would
#   ruby ood_render.rb completed APP_DIR SESSION_DIR            -> stdout: the HTML
# Exit 3 with the error message on stderr when the app refuses the values (OnDemand would show it).

require "erb"
require "fileutils"
require "json"
require "ostruct"
require "pathname"
require "psych"
require "securerandom"

# The form values, answering to their names the way OnDemand's SessionContext does.
class FormContext
  def initialize(values)
    @values = values
  end

  def to_h
    @values.dup
  end

  def method_missing(name, *arguments, &block)
    key = name.to_s
    @values.key?(key) ? @values[key] : super
  end

  def respond_to_missing?(name, include_private = false)
    @values.key?(name.to_s) || super
  end
end

# The parts of OnDemand's Session that ERB files use.
class FakeSession
  attr_reader :id, :staged_root, :cluster_id, :job_id, :created_at

  def initialize(staged_root)
    @id = SecureRandom.uuid
    @staged_root = Pathname.new(staged_root)
    @cluster_id = "test"
    @job_id = nil
    @created_at = Time.now.to_i
  end

  def get_binding
    binding
  end
end

TemplateBinding = Struct.new(:session, :context) do
  def get_binding
    binding
  end
end

def render(text, bound)
  ERB.new(text, trim_mode: "-").result(bound)
end

def form_values(app, submitted)
  form = Psych.safe_load(File.read(File.join(app, "form.yml")))
  attributes = form.fetch("attributes", {})
  values = {}
  form.fetch("form").each do |id|
    options = attributes.fetch(id, {})
    if options.is_a?(Hash)
      values[id] = submitted.key?(id) ? submitted[id].to_s : options.fetch("value", "").to_s
    else
      values[id] = options.to_s # fixed by the app: the browser cannot change it
    end
  end
  illegal = OpenStruct.new.methods.map(&:to_s) & values.keys
  raise "#{illegal.inspect} are keywords that cannot be used as names for form items" unless illegal.empty?
  values
end

def smart_attribute_options(values)
  script = {}
  queue = values["auto_queues"] || values["bc_queue"]
  script["queue_name"] = queue unless queue.nil? || queue.empty?
  account = values["auto_accounts"] || values["bc_account"]
  script["accounting_id"] = account unless account.nil? || account.empty?
  script["wall_time"] = values["bc_num_hours"].to_i * 3600 if values["bc_num_hours"].to_s =~ /\A\d+\z/
  script["email_on_started"] = true if values["bc_email_on_started"].to_s == "1"
  script
end

def basic_job_script(header, work_dir)
  <<~SCRIPT
    #{header}
    cd #{work_dir}
    clean_up () {
      echo "Cleaning up..."
      [[ ${SCRIPT_PID} ]] && pkill -P ${SCRIPT_PID} || :
      pkill -P $$
      exit ${1:-0}
    }
    host=$(hostname)
    [[ -e "#{work_dir}/before.sh" ]] && source "#{work_dir}/before.sh"
    echo "Script starting..."
    "#{work_dir}/script.sh" &
    SCRIPT_PID=$!
    [[ -e "#{work_dir}/after.sh" ]] && source "#{work_dir}/after.sh"
    wait ${SCRIPT_PID} || clean_up 1
    clean_up
  SCRIPT
end

# ood_core: OodCore::Job::Script turns job_environment into a Hash of Strings.
def job_environment(script)
  environment = script["job_environment"]
  return {} if environment.nil?
  raise "job_environment must be a mapping, not #{environment.inspect}" unless environment.is_a?(Hash)
  environment.each_with_object({}) { |(name, value), strings| strings[name.to_s] = value.to_s }
end

# ood_core's Slurm adapter: it never lets sbatch copy the web node's environment by default.
def export_arg(environment, copy_environment)
  if !environment.empty? && !copy_environment then environment.keys.join(",")
  elsif !environment.empty? && copy_environment then "ALL," + environment.keys.join(",")
  elsif copy_environment then "ALL"
  else "NONE"
  end
end

def sbatch_arguments(script, work_dir)
  args = ["-D", work_dir, "-J", "ondemand/sys/dashboard/sys/whisper", "-o", File.join(work_dir, "output.log")]
  started, ended = script["email_on_started"], script["email_on_terminated"]
  if started && ended then args += ["--mail-type", "ALL"]
  elsif started then args += ["--mail-type", "BEGIN"]
  elsif ended then args += ["--mail-type", "END"]
  end
  args += ["-p", script["queue_name"]] if script["queue_name"]
  args += ["-A", script["accounting_id"]] if script["accounting_id"]
  args += ["-t", format("%02d:%02d:%02d", script["wall_time"] / 3600, script["wall_time"] / 60 % 60, script["wall_time"] % 60)] if script["wall_time"]
  args += ["--export", export_arg(job_environment(script), script["copy_environment"])]
  args + Array(script["native"]).map(&:to_s)
end

def submit(app, work_dir, submitted)
  values = form_values(app, submitted)
  struct = OpenStruct.new(values.merge("staged_root" => Pathname.new(work_dir)))
  rendered = render(File.read(File.join(app, "submit.yml.erb")), struct.instance_eval { binding })
  config = Psych.safe_load(rendered) || {}
  script = smart_attribute_options(values).merge(config.fetch("script", {}))
  batch_connect = config.fetch("batch_connect", {})
  raise "only the basic template is emulated" unless batch_connect.fetch("template", "basic") == "basic"

  FileUtils.mkdir_p(work_dir)
  FileUtils.cp_r(File.join(app, "template", "."), work_dir, preserve: true)
  File.write(File.join(work_dir, "user_defined_context.json"), JSON.pretty_generate(values))
  session = FakeSession.new(work_dir)
  bound = TemplateBinding.new(session, FormContext.new(values)).get_binding
  Dir.glob(File.join(work_dir, "**", "*.erb")).select { |f| File.file?(f) }.each do |file|
    target = file.sub(/\.erb\z/, "")
    output = render(File.read(file), bound)
    File.rename(file, target)
    File.write(target, output)
  end

  content = basic_job_script(batch_connect.fetch("header", ""), work_dir)
  content_file = File.join(work_dir, "job_script_content.sh")
  File.write(content_file, content)
  args = sbatch_arguments(script, work_dir)
  File.write(File.join(work_dir, "job_script_options.json"), JSON.pretty_generate(args))
  puts JSON.generate("script" => content_file, "args" => args, "environment" => job_environment(script), "submit" => config)
end

def completed(app, work_dir)
  session = FakeSession.new(work_dir)
  puts render(File.read(File.join(app, "completed.html.erb")), session.get_binding)
end

command, app, work_dir, values_file = ARGV
begin
  case command
  when "submit" then submit(app, work_dir, JSON.parse(File.read(values_file)))
  when "completed" then completed(app, work_dir)
  else abort "usage: ruby ood_render.rb submit|completed APP_DIR SESSION_DIR [VALUES.json]"
  end
rescue ArgumentError => error
  warn error.message
  exit 3
end
